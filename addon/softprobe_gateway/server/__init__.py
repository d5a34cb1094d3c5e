"""`softprobe serve`'s HTTP side: an ASGI app (Starlette) under uvicorn, over the store.

`app` routes OTLP ingest (`/v1/traces`), lookups (`/v1/inject`), the read API (`/api/sessions...`)
and Softprobe's control API (`/health`, `/v1/meta`, `/v1/sessions...`: `control_api`); `bodies`
reads request bodies within their limits and parses JSON strictly; `protocol` closes idle and slow
connections and caps them; `run` binds the listen socket, runs the workers and stops gracefully.
The store never imports this package, and this package never imports mitmproxy or the proxy.
"""
