"""Errors that vlkit raises for user mistakes.

Every user-facing error is a :class:`VlkitError`: its message is one line that names
the problem and the fix. The CLI prints that line and exits with code 1; anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations


class VlkitError(Exception):
    """A user error: bad input, missing file, unknown name. The message says the fix."""


class NotFittedError(VlkitError, ValueError, AttributeError):
    """A method was used before ``fit`` (scikit-learn style: also an AttributeError, so
    ``hasattr(method, "keys_")`` is False before fit)."""


class DataError(VlkitError):
    """A dataset, image or split file cannot be used as given."""


class BackboneMismatchError(VlkitError):
    """Features or a saved artifact come from another backbone than the one in use."""


class ShapeError(VlkitError, ValueError):
    """An array has the wrong shape, dtype or layout."""
