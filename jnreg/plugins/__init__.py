"""The built-in agent plugins, one module per JustNews adapter agent, loaded through entry points."""
