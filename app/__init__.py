"""dsm: a dataset manager for people who evaluate language models."""

from dsm.version import __version__

__all__ = ["__version__"]
