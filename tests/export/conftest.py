"""Fixtures of the export tests: tiny models with the synthetic dataset's classes, registered
in the session's real MLflow server under their own names, and a runner of ``vitpipe export``.

The checkpoints come from the serving tests' helper (random weights, no all-zero tensors, so
outputs differ between inputs); ``tests/serving`` is put on ``sys.path`` to import it.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))

from serve_testlib import make_checkpoint  # noqa: E402

# Fast settings: a few images and timing calls (parity itself is not sampled less).
FAST = ["--latency-runs", "3", "--synthetic-images", "6", "--max-images", "24"]


@pytest.fixture(scope="session")
def export_models(mlflow_server, tmp_path_factory):
    """``{"classifier" | "detector": {"dir", "name", "version", "uri"}}``: vit_demo and
    yolos_demo with the synthetic classes, each registered as version 1 of its own name."""
    from components.data.synth import CLASS_NAMES
    from components.tracking.registry import register_checkpoint

    root = tmp_path_factory.mktemp("export-ckpt")
    suffix = uuid.uuid4().hex[:8]
    models = {}
    for key, model_name, task, seed in (("classifier", "vit_demo", "classification", 11),
                                        ("detector", "yolos_demo", "detection", 12)):
        ckpt = make_checkpoint(root / key, model_name, task, seed, class_names=list(CLASS_NAMES))
        name = f"export-test-{key}-{suffix}"
        version = register_checkpoint(ckpt, task=task, registered_name=name,
                                      tracking_uri=mlflow_server.uri)
        models[key] = {"dir": ckpt, "name": name, "version": version,
                       "uri": f"models:/{name}/{version}"}
    return models


@pytest.fixture()
def run_export(capsys):
    """``run_export(uri, fmt, out, *flags)`` → ``(exit code, report or None, stderr)``: the
    real ``vitpipe`` entry point in this process, with ``--json``."""
    from components.cli.main import main

    def run(uri: str, fmt: str, out: Path, *flags: str):
        capsys.readouterr()
        rc = main(["export", uri, "--format", fmt, "--out", str(out), "--json", *FAST, *flags])
        captured = capsys.readouterr()
        report = json.loads(captured.out) if rc == 0 or captured.out.strip() else None
        return rc, report, captured.err

    return run
