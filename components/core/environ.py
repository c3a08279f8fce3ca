"""Process environment variables changed for a block only."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def restored_environ(*names: str) -> Iterator[None]:
    """Whatever the block does to ``names`` in ``os.environ`` is undone when it ends (a
    variable that was unset is removed again), even when it raises."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
