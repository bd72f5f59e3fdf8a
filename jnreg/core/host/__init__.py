"""The plugin host: hook specifications, the plugin manager and loading, agent specs, and the plugin scaffold."""
