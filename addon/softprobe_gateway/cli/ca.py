"""`softprobe ca`: the certificate authority the gateway intercepts HTTPS with.

The gateway answers an app's TLS with certificates it signs on the fly with this CA (mitmproxy's
confdir files). The CA is created once, its private key kept in a Secret, and its certificate
given to the apps to trust (a ConfigMap). mitmproxy's own generator writes the files, so a
directory made here is exactly what `mitmdump --set confdir=DIR` reads (and would have made).
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import TextIO

import certifi
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from mitmproxy import certs
from mitmproxy.options import KEY_SIZE

from softprobe_gateway.config.schema import ConfigError

DEFAULT_DIR = "~/.mitmproxy"  # mitmproxy's default confdir: `make run` and plain mitmdump use it
BASENAME = "mitmproxy"
KEY_FILE, CERT_FILE, DHPARAM_FILE = (f"{BASENAME}-ca.pem", f"{BASENAME}-ca-cert.pem",
                                     f"{BASENAME}-dhparam.pem")
SECRET_NAME = "softprobe-mitmproxy-ca"
CONFIGMAP_NAME = "softprobe-ca-cert"
CERT_KEY, BUNDLE_KEY = "ca.crt", "ca-bundle.pem"  # the ConfigMap's keys


class CaError(ConfigError):
    """No usable CA where one was named (one line, exit 2 like any CLI error)."""


def register(commands: argparse._SubParsersAction) -> None:
    """Add `softprobe ca ACTION` to the CLI."""
    ca = commands.add_parser("ca", help="create the HTTPS interception CA and hand it out")
    actions = ca.add_subparsers(required=True, metavar="ACTION")
    one_dir = argparse.ArgumentParser(add_help=False)
    one_dir.add_argument("--dir", default=DEFAULT_DIR, help=f"the CA's directory (default {DEFAULT_DIR})")
    # Trust can name several CAs: during a rotation apps trust the new one and the old one.
    dirs = argparse.ArgumentParser(add_help=False)
    dirs.add_argument("--dir", action="append", dest="dirs", metavar="DIR",
                      help=f"a CA directory, repeatable for a rotation (default {DEFAULT_DIR})")
    roots = argparse.ArgumentParser(add_help=False)
    roots.add_argument("--roots", default=certifi.where(),
                       help="public roots the bundle starts with (default: certifi's Mozilla bundle)")
    namespace = argparse.ArgumentParser(add_help=False)
    namespace.add_argument("--namespace", default="softprobe", help="namespace of the manifest")

    create = actions.add_parser("create", parents=[one_dir], help="generate a new CA (never overwrites)")
    create.add_argument("--cn", default="Softprobe capture gateway CA", help="the CA's common name")
    create.set_defaults(command=cmd_create)
    cert = actions.add_parser("cert", parents=[dirs], help="print the CA certificate(s), PEM")
    cert.set_defaults(command=cmd_cert)
    bundle = actions.add_parser("bundle", parents=[dirs, roots],
                                help="print public roots plus the CA certificate(s): a trust bundle")
    bundle.set_defaults(command=cmd_bundle)
    secret = actions.add_parser("secret", parents=[one_dir, namespace],
                                help="print the gateway's Secret manifest (holds the private key)")
    secret.add_argument("--name", default=SECRET_NAME)
    secret.set_defaults(command=cmd_secret)
    configmap = actions.add_parser("configmap", parents=[dirs, roots, namespace],
                                   help=f"print the apps' ConfigMap ({CERT_KEY} and {BUNDLE_KEY})")
    configmap.add_argument("--name", default=CONFIGMAP_NAME)
    configmap.set_defaults(command=cmd_configmap)


def cmd_create(args: argparse.Namespace, _settings: None, out: TextIO) -> int:
    directory = Path(args.dir).expanduser()
    if (directory / KEY_FILE).exists():
        raise CaError(f"{directory} already holds a CA: rotate by creating one in a new directory")
    # mitmproxy's own generator (its default key size), so the files are the ones mitmdump reads.
    certs.CertStore.create_store(directory, BASENAME, KEY_SIZE, organization="Softprobe", cn=args.cn)
    (cert,) = _certificates(directory)
    print(f"created CA {cert.subject.rfc4514_string()} in {directory}, valid until "
          f"{cert.not_valid_after_utc:%Y-%m-%d}, sha256 {cert.fingerprint(hashes.SHA256()).hex()}", file=out)
    print(f"private key: {directory / KEY_FILE} (keep it secret); certificate to trust: "
          f"{directory / CERT_FILE}", file=out)
    return 0


def cmd_cert(args: argparse.Namespace, _settings: None, out: TextIO) -> int:
    out.write(_pem(args.dirs))
    return 0


def cmd_bundle(args: argparse.Namespace, _settings: None, out: TextIO) -> int:
    out.write(_bundle(args.roots, args.dirs))
    return 0


def cmd_secret(args: argparse.Namespace, _settings: None, out: TextIO) -> int:
    directory = Path(args.dir).expanduser()
    _certificates(directory)  # a directory without a CA fails here, not in the pod
    dhparam = directory / DHPARAM_FILE
    # The read-only Secret mount must hold the dhparam file: mitmproxy would write it if missing.
    files = {KEY_FILE: (directory / KEY_FILE).read_bytes(),
             DHPARAM_FILE: dhparam.read_bytes() if dhparam.exists() else certs.DEFAULT_DHPARAM}
    _manifest(out, "Secret", args.name, args.namespace, type="Opaque",
              data={k: base64.b64encode(v).decode() for k, v in files.items()})
    return 0


def cmd_configmap(args: argparse.Namespace, _settings: None, out: TextIO) -> int:
    _manifest(out, "ConfigMap", args.name, args.namespace,
              data={CERT_KEY: _pem(args.dirs), BUNDLE_KEY: _bundle(args.roots, args.dirs)})
    return 0


def _certificates(directory: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates((directory / KEY_FILE).read_bytes())
    except FileNotFoundError:
        raise CaError(f"no CA in {directory} (create one: softprobe ca create --dir {directory})") from None
    except (OSError, ValueError) as e:
        raise CaError(f"{directory / KEY_FILE}: not a readable CA: {e}") from None


def _pem(dirs: list[str] | None) -> str:
    """The certificates (never the keys) of the CAs in `dirs`, PEM."""
    return "".join(cert.public_bytes(serialization.Encoding.PEM).decode()
                   for d in dirs or [DEFAULT_DIR] for cert in _certificates(Path(d).expanduser()))


def _bundle(roots: str, dirs: list[str] | None) -> str:
    """Public roots plus our CA: for runtimes whose variable REPLACES their roots (SSL_CERT_FILE,
    REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE), so hosts passed through untouched still verify."""
    try:
        text = Path(roots).read_text()
    except OSError as e:
        raise CaError(f"--roots {roots}: {e.strerror or e}") from None
    return text.rstrip("\n") + "\n" + _pem(dirs)


def _manifest(out: TextIO, kind: str, name: str, namespace: str, **fields: object) -> None:
    labels = {"app.kubernetes.io/part-of": "softprobe"}
    doc = {"apiVersion": "v1", "kind": kind,
           "metadata": {"name": name, "namespace": namespace, "labels": labels}, **fields}
    out.write(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1 << 16))


class _Dumper(yaml.SafeDumper):
    """PEM text as YAML block scalars (`|`), readable in `kubectl get -o yaml` and in diffs."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))
