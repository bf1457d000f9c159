"""Credentials out of URLs before anyone sees them: API answers, events, logs, `dsm show`.

A catalogue URL may carry a password (`https://user:pass@host/`) or a signed query
(`?X-Amz-Signature=...`, `?token=...`). Scheme, host and path stay, so the URL still says
where the data comes from; userinfo and credential-looking query or fragment values become
`[redacted]`. Pure and total: any string goes in, no exception comes out.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from dsm.domain.terminal import one_line

REDACTED = "[redacted]"

# Parameter names that carry a secret, matched on the lower-cased, percent-decoded name:
# exact names, names containing one of the words, and names ending in a key or sig suffix.
_SECRET_NAMES = frozenset(
    {"key", "sig", "pass", "pwd", "auth", "authorization", "code", "jwt", "session", "otp"}
)
_SECRET_WORDS = ("token", "secret", "passw", "signature", "credential", "apikey", "api_key")
_SECRET_SUFFIXES = ("_key", "-key", ".key", "_sig", "-sig", "_auth", "-auth", "sessionid")
# A URL inside free text (an error message): a scheme, "://", then up to whitespace or quote.
_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>`]+""")
_USERINFO = re.compile(r"(?<=://)[^/?#]*@")


def is_secret_name(name: str) -> bool:
    low = unquote(name).strip().lower()
    return (
        low in _SECRET_NAMES
        or any(w in low for w in _SECRET_WORDS)
        or low.endswith(_SECRET_SUFFIXES)
    )


def _redact_pairs(query: str) -> str:
    """`a=1&token=x` -> `a=1&token=[redacted]`; the order and the other pairs are kept."""
    out = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        out.append(f"{name}={REDACTED}" if eq and is_secret_name(name) else pair)
    return "&".join(out)


def without_userinfo(url: str) -> str:
    """The URL without its `user:password@` (also a stored `[redacted]@`, which urllib
    refuses to parse: a bracketed host that is no IPv6 address)."""
    return _USERINFO.sub("", url, count=1)


def redact_url(url: str) -> str:
    """The URL with userinfo and credential-looking query/fragment values replaced."""
    bare = without_userinfo(url)  # before parsing: "[redacted]@" is no IPv6 literal
    try:
        parts = urlsplit(bare)
    except ValueError:  # e.g. a broken IPv6 literal: redact the pairs after the "?" anyway
        head, mark, query = bare.partition("?")
        out = head + mark + _redact_pairs(query)
    else:
        out = urlunsplit(
            (
                parts.scheme,
                parts.netloc,
                parts.path,
                _redact_pairs(parts.query),
                _redact_pairs(parts.fragment),  # OAuth puts access_token=... there
            )
        )
    return out.replace("://", f"://{REDACTED}@", 1) if bare != url else out


def public_url(url: str) -> str:
    """The URL without its query and credentials: a CDN's signed parameters and a catalogue's
    `user:password@` must not land in errors or logs."""
    bare = without_userinfo(url)  # parsed without it: a stored "[redacted]@" is no host
    try:
        out = urlsplit(bare)._replace(query="", fragment="").geturl()
    except ValueError:  # a broken port or IPv6 literal: cut at the query by hand
        out = bare.partition("?")[0].partition("#")[0]
    return out.replace("://", f"://{REDACTED}@", 1) if bare != url else out


def redact_text(text: str) -> str:
    """Every URL inside free text (an error message, a log line) redacted."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def error_text(text: str) -> str:
    """An error as dsm stores and shows it (a job's, a dataset's, a line of `--run-job`, the
    dashboard's): no credentials, one printable line."""
    return one_line(redact_text(text))


def redact_doc(value: Any) -> Any:
    """A JSON-like value (a dataset or job dict, an event) with every string redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_doc(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_doc(v) for v in value]
    return value
