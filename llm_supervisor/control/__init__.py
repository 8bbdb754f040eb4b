"""Control API (Unix socket / loopback TCP), its client, rendering for the CLI, and metrics."""
