"""Text that may reach a terminal, made harmless there: catalogue descriptions and names,
servers' error messages and HTTP headers are data, and data must not drive the terminal that
shows it (an ESC or a C1 CSI, U+009B, starts an escape sequence; a bidi override, U+202E,
shows the text reversed) nor break the write (a lone surrogate cannot be encoded).

`printable` shows such characters as Python escapes (plain output); `one_line` also joins
the lines of a text that must stay one line (an error: an exception's message may hold line
breaks, from a server, the system or a library); `json_text` writes JSON
with them as \\uXXXX escapes: valid JSON, the same value decoded, other non-ASCII text kept
readable (`ensure_ascii` would escape every accented letter too) where the stream takes it.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

# Controls but tab and line feed (C0, DEL, C1), the bidi controls, the line and paragraph
# separators (a JavaScript reader of the JSON breaks on them) and lone surrogates.
_HOSTILE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)


def printable(text: str) -> str:
    """`text` with hostile characters shown as escapes (`\\x1b`, `\\u202e`)."""
    return _HOSTILE.sub(lambda m: repr(m.group())[1:-1], text)


# A line break, with the blanks around it (an indented continuation, an empty line): every
# character `str.splitlines` breaks on.
_BREAKS = re.compile(r"\s*(?:\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029])\s*")
LINE_JOIN = " | "


def one_line(text: str) -> str:
    """`text` as one printable line: its lines joined with " | ", hostile characters shown
    as escapes. The form of every error dsm stores or shows; applied twice, it changes
    nothing."""
    return printable(_BREAKS.sub(LINE_JOIN, text.strip()))


def json_text(value: Any, *, ascii: bool = False, **dumps: Any) -> str:
    """`json.dumps(value, **dumps)` with no hostile character raw: they only occur inside
    JSON strings (C0 ones json escapes itself; tab and line feed outside strings are
    layout), where `\\uXXXX` stands for the same character. `ascii`: every non-ASCII
    character escaped, for a stream that cannot encode them (`writes_unicode`)."""
    text = json.dumps(value, ensure_ascii=ascii, **dumps)
    return _HOSTILE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def writes_unicode(stream: object) -> bool:
    """Whether a text stream encodes every character (UTF-8, say; not a C locale's ASCII
    or Latin-1, where JSON must escape what they cannot take: a replacement is no JSON)."""
    try:
        return codecs.lookup(str(getattr(stream, "encoding", None))).name.startswith("utf")
    except LookupError:
        return False
