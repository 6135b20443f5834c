"""The single source of hfserve's version."""

__version__ = "0.1.0"
