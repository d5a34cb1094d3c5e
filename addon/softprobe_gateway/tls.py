"""One TLS client context for every call the gateway makes to its backend (lookups and exports).

`ssl.create_default_context()` loads OpenSSL's default verify paths, which honour `SSL_CERT_FILE`
and `SSL_CERT_DIR`: a private CA configured that way is trusted by lookups and exports alike
(httpx with `trust_env=False` would otherwise trust only certifi's bundle).
"""

from __future__ import annotations

import ssl


def client_context() -> ssl.SSLContext:
    """The verifying client context of the lookup client and the export sink (read from the
    environment when a client is built, so one built after `SSL_CERT_FILE` is set trusts it)."""
    return ssl.create_default_context()
