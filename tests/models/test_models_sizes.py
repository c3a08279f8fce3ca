"""Parameter counts match the papers (within 2%), counted on the meta device; the CLI lists them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from components.models import build_model, get_spec, list_models
from components.models.hf_detectors import FAMILIES as HF_FAMILIES
from components.models.summary import count_params, summarize

# name: (paper parameters, classes)
PAPER_SIZES = {
    "vit_base_patch16_224": (86e6, 1000),
    "vit_large_patch16_224": (307e6, 1000),
    "vit_huge_patch14_224": (632e6, 1000),
    "deit_tiny_patch16_224": (5.7e6, 1000),
    "deit_small_patch16_224": (22e6, 1000),
    "tnt_s_patch16_224": (23.8e6, 1000),
    "tnt_b_patch16_224": (65.6e6, 1000),
    "detr_resnet50": (41e6, 91),
    "yolos_ti": (6.5e6, 91),
    "yolos_s": (30.7e6, 91),
}


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_parameter_count_matches_paper(name):
    paper, classes = PAPER_SIZES[name]
    with torch.device("meta"):
        model = build_model(name, num_classes=classes)
    assert next(model.parameters()).is_meta
    assert count_params(model) == pytest.approx(paper, rel=0.02)


def test_flops_of_vit_base_are_the_known_17_6_gmacs():
    summary = summarize("vit_base_patch16_224")
    assert summary.gmacs == pytest.approx(17.56, rel=0.02)
    assert summary.gflops == pytest.approx(2 * summary.gmacs, rel=1e-3)
    assert summary.params == pytest.approx(86.6e6, rel=0.01)


def test_cli_models_list_json():
    out = subprocess.run(
        [sys.executable, "-m", "components.cli.main", "models", "list", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == list_models()
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        assert {"name", "task", "params", "gflops"} <= set(r)
        assert r["params"] > 0
        if get_spec(r["name"]).family in HF_FAMILIES:  # no FLOP count on the meta device
            assert r["gflops"] is None
        else:
            assert r["gflops"] > 0
    assert by_name["yolos_demo"]["task"] == "detection"
    assert by_name["vit_demo"]["task"] == "classification"
    assert by_name["vit_huge_patch14_224"]["params"] > by_name["vit_large_patch16_224"]["params"]
    table = subprocess.run(
        [sys.executable, "-m", "components.cli.main", "models", "list", "--task", "detection"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    assert "detr_resnet50" in table and "vit_demo" not in table
