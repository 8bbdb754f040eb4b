"""Engine processes: spawning, output, the stop ladder, and the registry of live groups."""
