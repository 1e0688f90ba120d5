"""rollbackd: makes bad releases undo themselves."""

__version__ = "0.1.0"
