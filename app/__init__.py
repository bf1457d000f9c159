"""dsm: a dataset manager for people who evaluate language models.

The Python API, for evaluation harnesses (see help() of each, and dsm.library):

    ensure(name) -> Path            the verified local copy, downloaded if needed
    ensure_all(names) -> dict       the same for several datasets, in parallel
    path(name) -> Path              the verified local copy, never the network
    verify(name) -> Path            hash the local copy again, in full
    datasets() -> list[DatasetInfo] every dataset of the catalogue
    aensure, aensure_all, apath, averify, adatasets: the async twins

Errors: DatasetError, and its subclasses NotFoundError, OfflineError, IntegrityError,
NetworkError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dsm.version import __version__

if TYPE_CHECKING:
    from dsm.library import (
        DatasetError,
        DatasetInfo,
        IntegrityError,
        NetworkError,
        NotFoundError,
        OfflineError,
        adatasets,
        aensure,
        aensure_all,
        apath,
        averify,
        datasets,
        ensure,
        ensure_all,
        path,
        verify,
    )

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "IntegrityError",
    "NetworkError",
    "NotFoundError",
    "OfflineError",
    "__version__",
    "adatasets",
    "aensure",
    "aensure_all",
    "apath",
    "averify",
    "datasets",
    "ensure",
    "ensure_all",
    "path",
    "verify",
]


def __getattr__(name: str) -> object:
    # The API loads on first use (PEP 562): the engine and httpx would double the start-up
    # time of every `dsm` command, which imports this package first.
    if name not in __all__:
        raise AttributeError(f"module 'dsm' has no attribute {name!r}")
    from dsm import library

    value: object = getattr(library, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
