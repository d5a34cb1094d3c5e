"""What the redaction rules call a secret: fields by name or dotted path (`Fields`), and values
that look like secrets wherever they occur (`Pattern`: a configured regex or a bearer token;
`Cards`: a Luhn-valid card number). `redaction.Redactor` applies them to recorded data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from softprobe_gateway.config.schema import ConfigError

# 13 to 19 digits, single spaces or dashes allowed between them, first digit 2 to 6: the issuer
# ranges of Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay and Maestro (and not the
# 13-digit epoch-millisecond timestamps that start with 1).
CARD = re.compile(r"(?<![0-9A-Za-z])[2-6](?:[ -]?[0-9]){12,18}(?![0-9A-Za-z])")
BEARER = re.compile(r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{8,}=*)")
DIGIT_RUNS = str.maketrans("0123456789", "\0" * 10, " -")  # digits to NUL, separators dropped
NAMES_KEPT = 1024  # single field names whose verdict is kept

Span = tuple[int, int]


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def _glob(pattern: str) -> str:
    return ".*".join(re.escape(part) for part in pattern.split("*"))


class Fields:
    """Which fields are secret: a name matches the last key of a path at any depth, a dotted
    entry the whole path from the root; `*` matches any run of characters. Names compare
    case-insensitively and ignoring `_` and `-` (`card_number` = `cardNumber` = `card-number`)."""

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        names: set[str] = set()
        name_globs: list[str] = []
        path_globs: list[str] = []
        entries_list = list(entries)
        for key, entry in entries_list:
            norm = _norm(entry.strip())
            if not all(norm.split(".")):
                raise ConfigError(f"key '{key}': empty field name or path segment in {entry!r}")
            if "." in norm:
                path_globs.append(_glob(norm))
            elif "*" in norm:
                name_globs.append(_glob(norm))
            else:
                names.add(norm)
        self.names = frozenset(names)
        self.name_glob = re.compile("|".join(name_globs), re.DOTALL) if name_globs else None
        self.path_glob = re.compile("|".join(path_globs), re.DOTALL) if path_globs else None
        # Every matching key contains, once normalized, the longest literal piece of some entry's
        # last segment: if none occurs in a text, no field in it can match (a cheap C-speed scan).
        # (`in` per piece: str.find is C speed, a regex alternation of them is not).
        pieces = {max(_norm(e.strip()).split(".")[-1].split("*"), key=len) for _, e in entries_list}
        # A piece containing another is implied by it (`token` covers `accesstoken`).
        self.hints = sorted(p for p in pieces if not any(o != p and o in p for o in pieces))
        self._names: dict[str, bool] = {}  # single names already judged (headers repeat them)

    def may_occur(self, text: str) -> bool:
        """False when no secret field can be named anywhere in `text`."""
        normed = _norm(text)
        return any(hint in normed for hint in self.hints)

    def matches(self, path: tuple[str, ...]) -> bool:
        if len(path) == 1:
            known = self._names.get(path[0])
            if known is None:
                if len(self._names) >= NAMES_KEPT:  # names a client chose: bounded
                    self._names.clear()
                known = self._names[path[0]] = self._match(path)
            return known
        return self._match(path)

    def _match(self, path: tuple[str, ...]) -> bool:
        last = _norm(path[-1])
        if last in self.names or (self.name_glob and self.name_glob.fullmatch(last)):
            return True
        return bool(self.path_glob and self.path_glob.fullmatch(".".join(map(_norm, path))))


class Pattern:
    """A value pattern: its capture groups are the secret (the rest of the match is kept, as
    `Bearer ` is), or the whole match when it has none. `hint`, a lower-case literal every match
    contains, lets most texts be passed over at C speed (Python's re scans case-insensitive
    patterns character by character: 1.6 ms per 64 KiB)."""

    def __init__(self, regex: re.Pattern[str], min_length: int = 0, hint: str = "") -> None:
        self.regex, self.min_length, self.hint = regex, min_length, hint

    def spans(self, text: str) -> Iterator[Span]:
        if len(text) < self.min_length or (self.hint and self.hint not in text.lower()):
            return
        for m in self.regex.finditer(text):
            if self.regex.groups:
                yield from (m.span(g) for g in range(1, self.regex.groups + 1) if m.start(g) >= 0)
            else:
                yield m.span()


class Cards:
    """Card numbers: card-shaped digit runs that pass the Luhn check. A run may swallow a number
    written after the card (`4111 1111 1111 1111 12/25`), so a failing run is cut back to its
    longest valid prefix that ends between digit groups."""

    min_length = 13

    def spans(self, text: str) -> Iterator[Span]:
        # No 13 digits in a row once separators are dropped: no card (0.1 ms per 64 KiB, where
        # the CARD scan alone costs 1.5 ms).
        if len(text) < self.min_length or "\0" * 13 not in text.translate(DIGIT_RUNS):
            return
        for m in CARD.finditer(text):
            if end := _card_end(m.group()):
                yield m.start(), m.start() + end


def _card_end(run: str) -> int:
    """Length of the longest Luhn-valid prefix of `run` cut at a group boundary, 0 if none."""
    digits = run.replace(" ", "").replace("-", "")
    if luhn(digits):
        return len(run)
    groups = re.split(r"[ -]", run)
    for n in range(len(groups) - 1, 0, -1):
        prefix = "".join(groups[:n])
        if len(prefix) >= 13 and luhn(prefix):
            return len(" ".join(groups[:n]))  # separators are one character each
    return 0


def luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0
