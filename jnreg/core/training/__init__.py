"""Training an adapter: settings, checks before a run, the engine, packing, progress, outputs, data parallelism."""
