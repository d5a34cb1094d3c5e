"""Asynchronous export, split as OpenTelemetry splits it:

- `queue`: the bounded queue in the proxy process; the one place batches are cut.
- `messages`: the typed messages that cross the process boundary.
- `worker`: the worker process (encode, send, retry) and how the proxy launches it.
- `sinks`: where batches go (HTTP backend, JSON-lines file, embedded store), and the one
  function that opens the embedded store for the runtime and the worker alike.
- `exporter`: the proxy side that feeds the worker, applies its reports and restarts it.
"""

from .exporter import Exporter

__all__ = ["Exporter"]
