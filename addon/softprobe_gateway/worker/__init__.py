"""The export worker process: exchanges in (from `export`), OTLP out to the backend's sink. It
never imports the proxy's modules."""
