"""redact_url / redact_text: one helper keeps credentials out of every output."""

from __future__ import annotations

import pytest

from dsm.domain.redact import REDACTED, redact_doc, redact_text, redact_url

R = REDACTED


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://host/data/f.jsonl", "https://host/data/f.jsonl"),
        ("https://host/f?split=test&rev=3", "https://host/f?split=test&rev=3"),
        ("https://user:pass@host/f", f"https://{R}@host/f"),
        ("https://user@host:8443/f", f"https://{R}@host:8443/f"),
        ("https://a:b@c@host/f", f"https://{R}@host/f"),
        ("https://host/f?token=abc", f"https://host/f?token={R}"),
        ("https://host/f?Token=abc&x=1", f"https://host/f?Token={R}&x=1"),
        ("https://host/f?access_token=abc", f"https://host/f?access_token={R}"),
        ("https://host/f?refresh_token=abc", f"https://host/f?refresh_token={R}"),
        ("https://host/f?password=hunter2", f"https://host/f?password={R}"),
        ("https://host/f?passwd=hunter2", f"https://host/f?passwd={R}"),
        ("https://host/f?key=AIza", f"https://host/f?key={R}"),
        ("https://host/f?api_key=1&apikey=2", f"https://host/f?api_key={R}&apikey={R}"),
        ("https://host/f?client_secret=s", f"https://host/f?client_secret={R}"),
        ("https://host/f?sig=abc&sv=2020&se=2030", f"https://host/f?sig={R}&sv=2020&se=2030"),
        (
            "https://b.s3.amazonaws.com/f?X-Amz-Algorithm=AWS4&X-Amz-Credential=AK%2F1"
            "&X-Amz-Signature=deadbeef&X-Amz-Security-Token=tok",
            "https://b.s3.amazonaws.com/f?X-Amz-Algorithm=AWS4&X-Amz-Credential="
            f"{R}&X-Amz-Signature={R}&X-Amz-Security-Token={R}",
        ),
        ("https://host/f?X-Goog-Signature=ab", f"https://host/f?X-Goog-Signature={R}"),
        ("https://host/f?X%2DAmz%2DSignature=ab", f"https://host/f?X%2DAmz%2DSignature={R}"),
        ("https://host/cb#access_token=t&state=1", f"https://host/cb#access_token={R}&state=1"),
        ("https://host/f?token", "https://host/f?token"),  # a flag, no value to hide
        (
            "https://u:p@host/f?token=t&split=a",
            f"https://{R}@host/f?token={R}&split=a",
        ),
        ("http://[::1:8080/f?token=t", f"http://[::1:8080/f?token={R}"),  # unparseable
        ("http://u:p@[::1/f", f"http://{R}@[::1/f"),
        ("", ""),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_is_idempotent() -> None:
    once = redact_url("https://u:p@host/f?token=t&x=1")
    assert redact_url(once) == once


def test_redact_text_finds_urls_in_messages() -> None:
    text = "GET https://u:p@host/f?sig=x failed; retry 'http://h/g?token=y' later"
    assert redact_text(text) == (
        f"GET https://{R}@host/f?sig={R} failed; retry 'http://h/g?token={R}' later"
    )
    assert redact_text("no urls here: a=b&token=c") == "no urls here: a=b&token=c"


def test_redact_doc_walks_dicts_and_lists() -> None:
    doc = {
        "original_url": "https://u:p@h/f",
        "size": 3,
        "error": None,
        "nested": [{"u": "https://h/f?key=k"}, 1.5, True],
    }
    assert redact_doc(doc) == {
        "original_url": f"https://{R}@h/f",
        "size": 3,
        "error": None,
        "nested": [{"u": f"https://h/f?key={R}"}, 1.5, True],
    }
