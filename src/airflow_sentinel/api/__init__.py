"""The controller's HTTP API, its metrics and its status page."""
