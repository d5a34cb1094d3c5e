"""Asynchronous export, split as OpenTelemetry splits it:

- `queue`: the bounded queue in the proxy process; the one place batches are cut.
- `messages`: the typed messages that cross the process boundary.
- `handoff`: the shared-memory ring large bodies cross it through, beside their batch.
- `launch`: how the proxy starts the worker process (`softprobe_gateway.worker`: encode, send,
  retry into the backend's sink, `softprobe_gateway.backends`) and talks to it.
- `exporter`: the proxy side that feeds the worker, applies its reports and restarts it.

More than one worker needs no change to the queue (it keeps batches in flight per worker id)
nor to the messages: one supervisor per worker, each with its own ring. A batch crosses as one
pickled `Batch`; bodies of `handoff.MIN_SHARED_BYTES` and more travel in the ring when it has
room, and in the pickle otherwise.
"""
