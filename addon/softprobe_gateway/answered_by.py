"""Who answered an exchange the gateway answered itself, not the upstream: the values of
`Exchange.answered_by`, of the span attribute `sp.answered_by` and of the store's `answered_by`
column. Such an exchange is exported and visible, but never replayed as a recording.

A module of its own that imports nothing, as `otlp` is, so that capture (which sets them) and the
store (which counts a run's answers by them) share them without the store importing capture.
"""

from __future__ import annotations

HIT = "hit"  # a lookup answered it from a recording
MOCK = "mock"  # a mock (the config's or a control session's rule)
REFUSAL = "refusal"  # strict replay refused it: no recording to answer with
ADDON = "addon"  # another addon of the same mitmproxy (server playback, map local, a script)
