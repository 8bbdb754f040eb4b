"""The gateway: one front door for every engine, where the central keep_alive policy applies."""
