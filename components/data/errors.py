"""The data stage's one error type for inputs that cannot be used as given."""

from __future__ import annotations


class DataError(ValueError):
    """A data source the user must fix: a missing folder, a malformed annotation file, a
    split left with no usable image. Entry points print it as one line and exit 2."""
