"""Redaction of secrets in what the gateway records: passwords, tokens, card numbers, CVVs.

It applies to recorded data only (span attributes and lookup requests, everything that leaves
the process), never to the traffic proxied between client and upstream. Fields are found by
name or dotted path inside JSON, form and query data and their values replaced in place, so
the data keeps its structure (JSON stays JSON of the same shape, a form stays a form); values
that look like secrets (a Luhn-valid card number, a bearer token, configured patterns) are
replaced wherever they occur. `mode: hash` replaces a secret with a keyed hash instead of a
mask, so equal secrets still correlate across recordings and replays without being readable.

A `Redactor` is compiled once per config. Its methods are pure functions of strings, linear in
their input, safe to share between threads, and return their input unchanged (the same
object) when nothing matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from softprobe_gateway.config.schema import ConfigError, RedactionConfig

SALT_ENV = "SOFTPROBE_REDACTION_SALT"
FORM = "application/x-www-form-urlencoded"
# Header values that are URLs: their query (and fragment, for OAuth implicit-flow redirects)
# is redacted like a request's query.
URL_HEADERS = frozenset({":path", "location", "content-location", "referer"})
# 13 to 19 digits, single spaces or dashes allowed between them, first digit 2 to 6: the issuer
# ranges of Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay and Maestro (and not the
# 13-digit epoch-millisecond timestamps that start with 1).
CARD = re.compile(r"(?<![0-9A-Za-z])[2-6](?:[ -]?[0-9]){12,18}(?![0-9A-Za-z])")
BEARER = re.compile(r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{8,}=*)")
DIGIT_RUNS = str.maketrans("0123456789", "\0" * 10, " -")  # digits to NUL, separators dropped
# One `"key": value` member of a JSON text that does not parse (a body cut at the size cap):
# a string value may run to the end of the text.
JSON_MEMBER = re.compile(
    r'"((?:[^"\\]|\\.){1,256})"\s*:\s*("(?:[^"\\]|\\.)*(?:"|\\?\Z)|-?[0-9][0-9.eE+-]*)')
PAIR_SAFE = "[]:"  # kept readable in a replaced form or query value: `[REDACTED]`, `sha256:...`
NAMES_KEPT = 1024  # single field names whose verdict is kept
SPARSE_JSON = 256  # at most one '"' per this many characters: a JSON text is mostly values
# The bytes prefilter's fold: ASCII letters lower-cased, digits to NUL, separators dropped, so
# field names compare as `_norm` compares them and a card's digits form a run of NULs.
FOLD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                       b"abcdefghijklmnopqrstuvwxyz" + b"\0" * 10)
FOLD_DROP = b"_- "
FOLD_AT_ONCE = 4096  # bodies up to this size are folded and searched without the checks per byte
# What spells a name or digits that the raw bytes do not show: JSON `\u` escapes, form
# percent-encoding, and the two non-ASCII characters whose lower case is ASCII (U+0130 and the
# Kelvin sign U+212A, in UTF-8). A body containing one always takes the full path.
DISGUISES = (b"\\u", b"%", "\u0130".encode(), "\u212a".encode())

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


def _finite(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")  # json.dumps would write the invalid `Infinity`
    return value


def _not_json(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


class Redactor:
    """The redaction rules of one config, compiled."""

    def __init__(self, config: RedactionConfig, environ: Mapping[str, str] = os.environ) -> None:
        self.enabled = config.enabled
        self.mask = config.mask
        self.fields = Fields(
            [(f"redaction.fields[{i}]", f) for i, f in enumerate(config.fields)]
            + [(f"redaction.extra_fields[{i}]", f) for i, f in enumerate(config.extra_fields)])
        self.values: list[Pattern | Cards] = [Pattern(re.compile(p)) for p in config.patterns]
        if config.bearer_tokens:
            self.values.append(Pattern(BEARER, min_length=15, hint="bearer"))
        if config.luhn_cards:
            self.values.append(Cards())
        self.shortest = min((rule.min_length for rule in self.values), default=0)
        self.clues = self._clues(config)
        self.key: bytes | None = None
        if config.mode == "hash":
            salt = environ.get(SALT_ENV) or config.salt
            if not salt:
                # Unkeyed, a 3-digit CVV or a common password is undone by trying every candidate.
                raise ConfigError(f"key 'redaction.mode': hash needs a salt "
                                  f"(redaction.salt or the {SALT_ENV} environment variable)")
            self.key = salt.encode("utf-8")

    def _clues(self, config: RedactionConfig) -> tuple[bytes, ...] | None:
        """What every redactable body contains once folded (FOLD): a field-name hint, `bearer`,
        or 13 digits; None when that cannot be said (a configured pattern, a non-ASCII name)."""
        if config.patterns or not all(h.isascii() for h in self.fields.hints):
            return None
        clues = [b"\0" * Cards.min_length] if config.luhn_cards else []
        clues += [h.encode().translate(FOLD, FOLD_DROP) for h in self.fields.hints]
        if config.bearer_tokens:
            clues.append(b"bearer")
        return tuple(clues)

    # -- the interface ----------------------------------------------------------------------

    def may_redact(self, raw: bytes) -> bool:
        """False when nothing in this (decoded) body can be redacted, decided on its bytes: most
        bodies, above all large ones, then skip parsing and every pattern scan. Searching a
        megabyte for a word costs about as much as copying it, searching it for one byte
        (memchr) a hundredth of that: so a clue is searched for only once each of its bytes
        occurs, and the body is folded (FOLD) only when some clue may occur."""
        if not self.enabled:
            return False
        if self.clues is None or any(_contains(raw, d) for d in DISGUISES):
            return True
        if len(raw) <= FOLD_AT_ONCE:  # small: the fold costs less than the checks per byte
            folded = raw.translate(FOLD, FOLD_DROP)
            return any(clue in folded for clue in self.clues)
        seen: dict[int, bool] = {}

        def occurs(byte: int) -> bool:
            if byte not in seen:
                seen[byte] = (any(bytes((d,)) in raw for d in b"0123456789") if byte == 0 else
                              bytes((byte,)) in raw or bytes((byte,)).upper() in raw)
            return seen[byte]

        candidates = [clue for clue in self.clues if all(occurs(b) for b in set(clue))]
        if not candidates:
            return False
        folded = raw.translate(FOLD, FOLD_DROP)
        return any(clue in folded for clue in candidates)

    def body(self, text: str, content_type: str | None) -> str:
        """A text body: JSON and form fields by name, then value patterns everywhere."""
        if not self.enabled or not text:
            return text
        mime = (content_type or "").split(";", 1)[0].strip().lower()
        if mime == FORM:
            return self._pairs(text)
        if "json" not in mime and text.lstrip()[:1] not in ("{", "["):
            return self._values(text)  # no field names outside JSON and forms
        # Few strings in much text (a large blob): parsing and walking is cheaper than scanning
        # the text for every field name. Otherwise most bodies are decided by the scans alone.
        # The scans read the text as written: a `\u` escape can spell a name they miss.
        sparse = text.count('"') < len(text) // SPARSE_JSON
        if (not sparse and "\\u" not in text and not self.fields.may_occur(text)
                and not self._has_values(text)):
            return text
        redacted = self._json(text)
        return redacted if redacted is not None else self._values(self._json_members(text))

    def header(self, name: str, value: str) -> str:
        """A header (or pseudo-header) value: secret by name (an `x-` prefix ignored), a URL's
        query, or value patterns."""
        if not self.enabled:
            return value
        lower = name.lower()
        if lower in URL_HEADERS:
            return self.query(value)
        if self.fields.matches((lower.removeprefix("x-"),)):  # `X-Access-Token` is `access_token`
            return self.secret(value)
        return self._values(value)

    def query(self, path_with_query: str) -> str:
        """A path or URL: query and fragment parameters by name, value patterns in the rest."""
        if not self.enabled:
            return path_with_query
        rest, hash_, fragment = path_with_query.partition("#")
        path, mark, query = rest.partition("?")
        parts = (self._values(path), self._pairs(query), self._pairs(fragment))
        if parts[0] is path and parts[1] is query and parts[2] is fragment:
            return path_with_query
        return f"{parts[0]}{mark}{parts[1]}{hash_}{parts[2]}"

    def secret(self, value: str) -> str:
        """What a secret is recorded as: the mask, or `sha256:` and 16 hex digits of its keyed hash."""
        if self.key is None:
            return self.mask
        digest = hmac.new(self.key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"sha256:{digest.hexdigest()[:16]}"

    # -- structures -------------------------------------------------------------------------

    def _has_values(self, text: str) -> bool:
        return any(True for rule in self.values for _ in rule.spans(text))

    def _values(self, text: str) -> str:
        """Every value-pattern match replaced; overlapping matches are replaced as one."""
        if len(text) < self.shortest or not self.values:
            return text
        spans = sorted(span for rule in self.values for span in rule.spans(text))
        merged: list[list[int]] = []
        for start, end in spans:
            if merged and start < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            elif end > start:
                merged.append([start, end])
        if not merged:
            return text
        out, last = [], 0
        for start, end in merged:
            out += (text[last:start], self.secret(text[start:end]))
            last = end
        out.append(text[last:])
        return "".join(out)

    def _pairs(self, text: str) -> str:
        """Form or query pairs with secret values replaced; other pairs kept byte for byte."""
        if not text:
            return text
        pieces = text.split("&")
        changed = False
        for i, piece in enumerate(pieces):
            raw_key, sep, raw_value = piece.partition("=")
            if not sep:
                new = self._values(piece)
                changed, pieces[i] = changed or new is not piece, new
                continue
            value = unquote_plus(raw_value)
            if self.fields.matches(_pair_path(unquote_plus(raw_key))):
                new = self.secret(value)
            elif (new := self._values(value)) is value:
                continue
            pieces[i] = f"{raw_key}={quote_plus(new, safe=PAIR_SAFE)}"
            changed = True
        return "&".join(pieces) if changed else text

    def _json(self, text: str) -> str | None:
        """Redacted JSON (re-serialized compactly), the text itself when nothing matched, or None
        when it is not JSON (or nested too deep to walk)."""
        try:
            walk = _JsonWalk(self)
            doc = walk.node(json.loads(text, parse_float=_finite, parse_constant=_not_json), ())
            if not walk.changed:
                return text
            out = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        except (ValueError, RecursionError):
            return None
        try:
            out.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from `\ud800` escapes: keep them escaped
            out = json.dumps(doc, separators=(",", ":"))
        return out

    def _json_members(self, text: str) -> str:
        """JSON that does not parse (cut at the size cap): secret `"name": value` members found
        textually, their values replaced by a JSON string."""
        def member(m: re.Match[str]) -> str:
            if not self.fields.matches((m[1],)):
                return m[0]
            value = m[2].strip('"')  # a string cut at the end of the text has no closing quote
            return f"{m[0][:m.start(2) - m.start()]}{json.dumps(self.secret(value))}"
        return JSON_MEMBER.sub(member, text)


def _contains(raw: bytes, needle: bytes) -> bool:
    """`needle in raw`, at memchr speed when its first byte does not occur."""
    return needle[:1] in raw and needle in raw


def _pair_path(key: str) -> tuple[str, ...]:
    """`card[number]` and `card.number` are the path (card, number); list indexes are dropped."""
    if "." not in key and "[" not in key:
        return (key,)
    segments = tuple(s for s in re.split(r"[.\[\]]", key) if s and not s.isdigit())
    return segments or (key,)


class _JsonWalk:
    """One walk over a parsed JSON document, replacing secrets in place."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.changed = False
        self.secret_paths: dict[tuple[str, ...], bool] = {}  # arrays of records repeat their keys

    def secret(self, path: tuple[str, ...]) -> bool:
        known = self.secret_paths.get(path)
        if known is None:
            known = self.secret_paths[path] = self.redactor.fields.matches(path)
        return known

    def node(self, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            for key, item in value.items():
                sub = path + (key,)
                if self.secret(sub):
                    self.changed = True
                    value[key] = self.scrub(item)
                else:
                    value[key] = self.node(item, sub)
            return value
        if isinstance(value, list):
            for i, item in enumerate(value):
                value[i] = self.node(item, path)
            return value
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            text = value if isinstance(value, str) else str(value)
            redacted = self.redactor._values(text)
            if redacted is not text:
                self.changed = True
                return redacted
        return value

    def scrub(self, value: Any) -> Any:
        """Every scalar under a secret field replaced, containers kept (null and booleans say nothing)."""
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        if value is None or isinstance(value, bool):
            return value
        return self.redactor.secret(value if isinstance(value, str) else json.dumps(value))
