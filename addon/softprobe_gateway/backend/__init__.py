"""The embedded Softprobe-compatible backend: record exchanges to SQLite, answer lookups from them.

`store.Store` is the whole backend as a library (the gateway calls it in-process when
`sp_backend_url` is empty or `sqlite:`); `server` serves the same store over the protocol's HTTP
endpoints so several gateways can share it.
"""
