"""The Softprobe capture gateway: a mitmproxy addon, its embedded backend and the `softprobe` CLI."""

from importlib import metadata

try:
    __version__ = metadata.version("softprobe-gateway")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
