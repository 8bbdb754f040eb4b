"""A Service owns one engine process and its lifecycle state machine."""
