"""The backends, one object per kind (`http`, `file`, `embedded`; `select.backend_for`): the
worker's sink, the proxy's lookups, what a dead worker delivered (`contract`)."""
