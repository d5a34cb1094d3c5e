"""The bytes prefilter: whether a (decoded) body can contain anything to redact, decided on its
raw bytes before it is decoded, parsed or scanned, so most bodies skip all of that.
"""

from __future__ import annotations

from collections import Counter

from softprobe_gateway.capture.secret_rules import Cards

# The fold: ASCII letters lower-cased, digits to NUL, separators dropped, so field names
# compare as `secret_rules.Fields` compares them and a card's digits form a run of NULs (`+` is
# a form's encoded space: `4111+1111+1111+1111` is a card once the form is decoded).
FOLD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                       b"abcdefghijklmnopqrstuvwxyz" + b"\0" * 10)
FOLD_DROP = b"_- +"
FOLD_AT_ONCE = 4096  # bodies up to this size are folded and searched without the checks per byte
# What spells a name or digits that the raw bytes do not show: JSON `\u` escapes, form
# percent-encoding, and the two non-ASCII characters whose lower case is ASCII (U+0130 and the
# Kelvin sign U+212A, in UTF-8). A body containing one always takes the full path.
DISGUISES = (b"\\u", b"%", "\u0130".encode(), "\u212a".encode())


class Prefilter:
    """One config's rules reduced to clues: what every redactable body contains once folded
    (FOLD): a field-name hint, `bearer`, or 13 digits. `clues` is None when that cannot be said
    (a configured pattern, a non-ASCII name): then every body may need redaction."""

    def __init__(self, hints: list[str], *, patterns: bool, luhn_cards: bool, bearer_tokens: bool) -> None:
        self.clues: tuple[bytes, ...] | None = None
        self.checks: tuple[bytes, ...] = ()  # each clue's distinct bytes, those most clues share first
        if patterns or not all(h.isascii() for h in hints):
            return
        clues = [b"\0" * Cards.min_length] if luhn_cards else []
        clues += [h.encode().translate(FOLD, FOLD_DROP) for h in hints]
        if bearer_tokens:
            clues.append(b"bearer")
        self.clues = tuple(clues)
        # A large body lacks most letters when it lacks any (a blob, one field's value): checking
        # the bytes most clues share first rules most clues out with the same few memchr scans
        # (3 letters, not 6, for the default fields over a body of one repeated letter).
        shared = Counter(byte for clue in clues for byte in set(clue))
        self.checks = tuple(bytes(sorted(set(clue), key=lambda byte: (-shared[byte], byte))) for clue in clues)

    def may_match(self, raw: bytes) -> bool:
        """False when nothing in `raw` can be redacted. Searching a megabyte for a word costs
        about as much as copying it, searching it for one byte (memchr) a hundredth of that: so
        a clue is searched for only once each of its bytes occurs, and the body is folded (FOLD)
        only when some clue may occur."""
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

        candidates = [clue for clue, check in zip(self.clues, self.checks) if all(map(occurs, check))]
        if not candidates:
            return False
        folded = raw.translate(FOLD, FOLD_DROP)
        return any(clue in folded for clue in candidates)


def _contains(raw: bytes, needle: bytes) -> bool:
    """`needle in raw`, at memchr speed when its first byte does not occur."""
    return needle[:1] in raw and needle in raw
