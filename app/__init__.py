"""dsm: a dataset manager for people who evaluate language models."""

__version__ = "0.1.0"
