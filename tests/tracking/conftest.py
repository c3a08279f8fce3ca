"""Fixtures of the registry tests: tiny checkpoints and a unique registered name per test.

The session's ``mlflow_server`` is shared with other stages' tests, so each test registers
under its own name and never touches ``vitpipe-classifier`` / ``vitpipe-detector``.
"""

from __future__ import annotations

import uuid

import pytest
from tracking_helpers import make_checkpoint


@pytest.fixture()
def model_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def checkpoint_factory(tmp_path):
    def factory(seed: int, **kwargs) -> Path:
        return make_checkpoint(tmp_path / f"ckpt-{seed}-{uuid.uuid4().hex[:6]}", seed=seed,
                               **kwargs)

    return factory
