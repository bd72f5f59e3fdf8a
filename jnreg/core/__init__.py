"""The plugin host, agent specs, configuration, training engine and command line."""
