"""The mitmproxy side, the only code that runs mitmproxy (`softprobe ca` borrows its certificate
code): the addons (`gateway.addons()`: lifecycle, connections, recorder, answerer, the addon
chain), the per-flow state, routing, the runtime built from one config, lookups and the admin
endpoint. Runs on mitmproxy's event loop: nothing here blocks."""
