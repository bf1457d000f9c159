"""Where a dataset comes from, as the detail pane says it: one URL, or several files."""

from __future__ import annotations

from dsm.domain.display import source_text
from dsm.domain.model import Dataset


def test_one_url_is_shown_redacted() -> None:
    ds = Dataset(name="x", original_url="https://u:pw@h.example/x.zip?token=t")
    assert source_text(ds) == "https://[redacted]@h.example/x.zip?token=[redacted]"


def test_several_files_show_their_count_and_origins_without_credentials() -> None:
    listed = [
        {"url": "https://u:pw@b.example/train.jsonl?sig=s", "path": "train.jsonl"},
        {"url": "http://127.0.0.1:8000/test.jsonl", "path": "test.jsonl"},
        {"url": "https://b.example/dev.jsonl", "path": "dev.jsonl"},
        {"url": "http://h:port/broken", "path": "odd"},  # no exception, whatever is stored
    ]
    text = source_text(Dataset(name="x", files=listed))
    assert text.startswith("4 files from ")
    assert "http://127.0.0.1:8000" in text and "https://b.example" in text
    assert text.count("https://b.example") == 1 and "pw" not in text and "sig" not in text
