"""HTTPS interception policy: which TLS connections keep their own end-to-end TLS, and which CAs
the gateway trusts for its upstream connections.

Pass-through is decided on the ClientHello (its SNI or the destination), before any certificate is
forged: a pinned or mutual-TLS peer sees the upstream's own handshake, byte for byte, and nothing
of it is recorded. Upstream trust: mitmproxy's `ssl_verify_upstream_trusted_ca` REPLACES its
default roots, so a private CA is added by handing it a bundle of both.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import certifi
from cryptography import x509

from softprobe_gateway.config.schema import ConfigError

BUNDLE_PREFIX = "softprobe-upstream-ca-"


class Passthrough:
    """Exact names and IPs, and `*.domain` for any name below domain (not domain itself), as
    Istio's hosts read. Case-insensitive; a trailing dot is ignored."""

    def __init__(self, hosts: Iterable[str]) -> None:
        hosts = [h.lower().rstrip(".") for h in hosts]
        self._exact = frozenset(h for h in hosts if not h.startswith("*."))
        self._suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))

    def __call__(self, sni: str | None, address: tuple[str, int] | None) -> bool:
        names = [sni, address[0] if address else None]
        return any(self._matches(n.lower().rstrip(".")) for n in names if n)

    def _matches(self, name: str) -> bool:
        return name in self._exact or name.endswith(self._suffixes)


def upstream_trust(upstream_ca: str, current: str | None) -> str | None:
    """The value mitmproxy's `ssl_verify_upstream_trusted_ca` must have for `tls.upstream_ca`.

    Unset: whatever the operator passed on the command line (a bundle of ours from a previous
    config is dropped). Set: a bundle of certifi's roots (mitmproxy's default) and the private CA,
    written once per content to the temp directory (a writable emptyDir in the pod). Both at once
    would be ambiguous, so that is a config error.
    """
    ours = current is not None and Path(current).name.startswith(BUNDLE_PREFIX)
    if not upstream_ca:
        return None if ours else current
    if current and not ours:
        raise ConfigError("key 'tls.upstream_ca': mitmproxy's ssl_verify_upstream_trusted_ca is also set; "
                          "use one (tls.upstream_ca keeps the default roots, the option replaces them)")
    try:
        private = Path(upstream_ca).read_bytes()
        x509.load_pem_x509_certificates(private)
    except OSError as e:
        raise ConfigError(f"key 'tls.upstream_ca': cannot read {upstream_ca}: {e.strerror or e}") from None
    except ValueError:
        raise ConfigError(f"key 'tls.upstream_ca': {upstream_ca} holds no PEM certificate") from None
    bundle = Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + private
    path = Path(tempfile.gettempdir()) / f"{BUNDLE_PREFIX}{hashlib.sha256(bundle).hexdigest()[:16]}.pem"
    if not path.exists():  # content-addressed: a new CA is a new path, so mitmproxy reloads it
        try:
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
                f.write(bundle)
            os.chmod(f.name, 0o644)
            os.replace(f.name, path)
        except OSError as e:
            raise ConfigError(f"key 'tls.upstream_ca': cannot write the trust bundle in {path.parent} "
                              f"(TMPDIR): {e.strerror or e}") from None
    return str(path)
