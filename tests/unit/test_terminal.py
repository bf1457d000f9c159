"""Text bound for a terminal: no character that drives it, the same value once decoded."""

from __future__ import annotations

import io
import json

import pytest

from dsm.domain.display import short_cause
from dsm.domain.redact import error_text
from dsm.domain.terminal import json_text, one_line, printable, writes_unicode

# ESC (C0), CSI (C1, U+009B), DEL, a bidi override and isolate, a line separator, a lone
# surrogate: each drives a terminal, hides text, or cannot be written at all.
HOSTILE = ["\x1b", "\x9b", "\x85", "\x7f", "\u202e", "\u2066", "\u200f", "\u2028", "\ud800"]
TEXT = "red \x1b[31m csi \x9b2J rtl \u202etxt\u2069 sep \u2028 lone \ud800 kept: é 日本 \t tab"


@pytest.mark.parametrize("indent", [None, 2])
def test_json_text_escapes_what_drives_a_terminal_and_decodes_the_same(
    indent: int | None,
) -> None:
    value = {"description": TEXT, "nested": [TEXT, {"k\x9b": "v"}], "n": 1}
    out = json_text(value, indent=indent)
    assert json.loads(out) == value
    assert not [c for c in HOSTILE if c in out]
    assert "é 日本" in out  # other text stays readable (not ensure_ascii)
    assert out.encode("utf-8")  # no lone surrogate: the text can be written
    assert "\\u009b2J" in out and "\\u202e" in out and "\\ud800" in out
    if indent:  # the layout is untouched
        assert out.startswith('{\n  "description"')


def test_printable_shows_escapes_and_keeps_line_feeds_and_tabs() -> None:
    shown = printable(TEXT + "\nnext")
    assert not [c for c in HOSTILE if c in shown]
    assert "\\x1b[31m" in shown and "\\x9b2J" in shown and "\\u202etxt" in shown
    assert shown.endswith("\t tab\nnext") and "é 日本" in shown


def test_json_for_a_stream_that_takes_ascii_only() -> None:
    out = json_text({"d": TEXT + "\x7f"}, ascii=True)
    assert out.isascii() and json.loads(out) == {"d": TEXT + "\x7f"}
    assert "\x7f" not in out  # DEL is ASCII: ensure_ascii alone leaves it raw


@pytest.mark.parametrize(
    ("encoding", "unicode"),
    [("utf-8", True), ("UTF8", True), ("ascii", False), ("latin-1", False), (None, False)],
)
def test_which_streams_take_every_character(encoding: str | None, unicode: bool) -> None:
    stream = io.TextIOWrapper(io.BytesIO(), encoding=encoding or "utf-8")
    assert writes_unicode(stream if encoding else object()) is unicode


@pytest.mark.parametrize(
    "text",
    [
        "HTTP 502 Bad\nGateway",
        "HTTP 502 Bad\r\nGateway",
        "HTTP 502 Bad\rGateway",
        "HTTP 502 Bad \n\n   Gateway\n",
        "HTTP 502 Bad\u2028Gateway",
        "HTTP 502 Bad\x85Gateway",
        "HTTP 502 Bad\x1cGateway",
        "HTTP 502 Bad\vGateway",
    ],
)
def test_an_error_is_one_line_whatever_breaks_it(text: str) -> None:
    assert one_line(text) == "HTTP 502 Bad | Gateway"
    assert one_line(one_line(text)) == one_line(text)  # stored, then shown: the same


def test_error_text_redacts_joins_and_escapes() -> None:
    text = "failed:\n  https://u:secret@h/f?token=abc\n  \x1b[2Jgone"
    shown = error_text(text)
    assert len(shown.splitlines()) == 1 and "secret" not in shown and "abc" not in shown
    assert "\x1b" not in shown and shown.endswith("| \\x1b[2Jgone")
    assert short_cause("cannot verify:\nsector 12\nunreadable") == (
        "cannot verify: | sector 12 | unreadable"
    )
