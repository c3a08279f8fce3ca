"""Fixtures for the Kubernetes manifest tests (helpers in ``k8s_helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from k8s_helpers import K8S, OVERLAYS, render


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request, tmp_path_factory) -> tuple[str, Path, list[dict]]:
    """(name, rendered file, parsed documents) for each overlay."""
    name = request.param
    text = render(K8S / "overlays" / name)
    out = tmp_path_factory.mktemp(f"render-{name}") / f"{name}.yaml"
    out.write_text(text)
    docs = [d for d in yaml.safe_load_all(text) if d]
    return name, out, docs
