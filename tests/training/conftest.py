"""Fixtures for the training tests: tiny configs on the session's synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def storage_dir(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path
