"""Page sizes and page slicing, shared by `dsm list` and `GET /datasets`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE = 2**31 - 1


def page_of(rows: Sequence[T], page: int, size: int) -> list[T]:
    """Rows of the 1-based `page` of `size` rows; an empty list past the end."""
    start = (page - 1) * size
    return list(rows[start : start + size])
