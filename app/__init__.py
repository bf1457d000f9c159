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

import sys
import types
from typing import TYPE_CHECKING, Any

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


def _defer_httpx_command_line() -> None:
    """Put a stand-in for `httpx._main` until something uses it.

    `import httpx` imports its command line (`httpx._main`), which imports click, rich and
    pygments whenever they are installed (Textual brings rich): ~0.1 s of every dsm start,
    for a command dsm never runs. The first use of any of its names loads the real module.
    """
    if "httpx" in sys.modules:  # loaded already, command line and all
        return
    stub = types.ModuleType("httpx._main", _defer_httpx_command_line.__doc__)

    def real() -> types.ModuleType:
        import importlib

        if sys.modules.get(stub.__name__) is stub:
            del sys.modules[stub.__name__]
        return importlib.import_module(stub.__name__)

    def main(*args: Any, **kwargs: Any) -> Any:
        return real().main(*args, **kwargs)

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # the import system asks for __path__ and the like
            raise AttributeError(name)
        return getattr(real(), name)

    vars(stub).update(main=main, __getattr__=__getattr__)
    sys.modules[stub.__name__] = stub


_defer_httpx_command_line()
