"""Credentials in catalogue URLs stay in the catalogue.

A catalogue may give `https://user:password@host/f` or a signed `?token=...`. The store
(db.json, read by every process and user of the home, shown by every command) keeps every
URL of an entry (original_url, mirrors, each of its files) redacted (`stored_url`); the
transfer asks `source_url` for the URL to fetch, which returns a row's URL as it is, or, when
it was stored redacted, reads the real one again from the catalogue: the one URL of the
dataset's entry that redacts to what the row holds.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from dsm.catalog.parse import read_catalog, read_json
from dsm.domain.redact import REDACTED, redact_url
from dsm.errors import DsmError

_cache: dict[tuple[str, int, int], dict[str, dict[str, str]]] = {}
_cache_lock = threading.Lock()


def stored_url(url: str) -> str:
    """What the store keeps of a catalogue URL."""
    return redact_url(url)


def _entry_urls(raw: dict[str, Any]) -> list[str]:
    """Every URL an entry gives: original_url, its mirrors, its files' URLs."""
    mirrors, listed = raw.get("mirrors"), raw.get("files")
    urls = [raw.get("original_url")]
    urls += mirrors if isinstance(mirrors, list) else []
    urls += (
        [f.get("url") for f in listed if isinstance(f, dict)] if isinstance(listed, list) else []
    )
    return [u for u in urls if isinstance(u, str)]


def _secret_urls(catalog: Path) -> dict[str, dict[str, str]]:
    """name -> {redacted URL: URL} of the catalogue's URLs that carry a credential; read once
    per version of the file (a catalogue of 10,000 entries takes a while to parse)."""
    st = catalog.stat()
    key = (str(catalog), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        found = _cache.get(key)
    if found is None:
        doc = read_json(read_catalog(catalog))  # nested too deeply: a ValueError too
        rows = doc.get("datasets", []) if isinstance(doc, dict) else []
        found = {}
        for r in rows:
            if isinstance(r, dict) and isinstance(r.get("name"), str):
                secret = {stored_url(u): u for u in _entry_urls(r) if stored_url(u) != u}
                if secret:
                    found[r["name"]] = secret
        with _cache_lock:
            _cache.clear()  # one catalogue per process: the old version is of no use
            _cache[key] = found
    return found


def source_url(catalog: Path, name: str, stored: str) -> str:
    """The URL to fetch for a row: ValueError when its credentials are not to be found."""
    if REDACTED not in stored:
        return stored
    try:
        url = _secret_urls(catalog).get(name, {}).get(stored)
    except (OSError, ValueError, DsmError) as exc:  # gone, not JSON, unreadable
        raise ValueError(f"cannot read the catalogue {catalog}: {exc}") from None
    if url is None:
        raise ValueError(
            f"the URL of {name} carries credentials, kept only in the catalogue it came from; "
            f"{catalog} does not give that URL: run dsm with that catalogue"
        )
    return url
