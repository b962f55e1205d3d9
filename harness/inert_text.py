"""Text a file brought (names, keys, metadata, file names: strangers wrote them), made inert on a terminal."""

from __future__ import annotations

import unicodedata

# Bidirectional overrides and isolates reorder what a terminal shows ("Trojan Source"), as escapes move the cursor.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def visible(text) -> str:
    """`text` with every control character (ESC, CR, newline, C1, bidi) written as its escape, e.g. `\\x1b`: file names,
    keys and metadata come from strangers, and a terminal would run them."""
    return "".join(_escaped(c) for c in str(text))


def _escaped(character: str) -> str:
    if unicodedata.category(character) == "Cc" or character in BIDI_CONTROLS:
        return repr(character)[1:-1]
    return character
