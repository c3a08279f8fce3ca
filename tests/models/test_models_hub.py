"""Weights by name (``timm:<model>.<tag>``, ``hf:<org>/<name>[@rev]``) from a hub cache built
here, in the hub's own layout, with random weights; read with ``HF_HUB_OFFLINE=1``.

The resolution runs in a fresh Python process, as a training driver does: huggingface_hub
reads ``HF_HOME`` and ``HF_HUB_OFFLINE`` when it is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from components.models.import_weights import convert_timm_vit

ROOT = Path(__file__).resolve().parents[2]
REV = "0123456789abcdef0123456789abcdef01234567"
TIMM_NAME = "vit_tiny_patch16_224.augreg_in21k"  # timm's pretrained_cfg: hub repo timm/<this>


def put_in_hub_cache(hf_home: Path, repo_id: str, files: dict[str, bytes | dict],
                     revision: str = REV, ref: str = "main") -> Path:
    """``files`` as the hub cache holds them: ``hub/models--org--name/snapshots/<rev>/`` and
    ``refs/<ref>`` naming the revision (what ``huggingface_hub`` writes when it downloads)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(revision)
    for name, content in files.items():
        if isinstance(content, dict):
            save_file(content, str(snap / name))
        else:
            (snap / name).write_bytes(content)
    return snap


def tiny_timm_state(seed: int = 0, **arch) -> dict[str, torch.Tensor]:
    """A random timm ViT state dict shaped like vitpipe's ``vit_demo`` (4 x 96, 64 px)."""
    torch.manual_seed(seed)
    kwargs = {"embed_dim": 96, "depth": 4, "num_heads": 3, "img_size": 64, "num_classes": 7, **arch}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def run_offline(hf_home: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


LOAD = """
    import json
    from safetensors.torch import save_file
    from components.models.hub import load_hub_weights
    state, meta = load_hub_weights({ref!r})
    save_file(state, {out!r})
    print(meta["format"], json.dumps(meta["model_config"]))
"""


def load_offline(hf_home: Path, ref: str, tmp_path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``load_hub_weights(ref)`` in a fresh offline process → (state, meta)."""
    out = tmp_path / "loaded.safetensors"
    proc = run_offline(hf_home, LOAD.format(ref=ref, out=str(out)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    fmt, config = proc.stdout.strip().split(" ", 1)
    return load_file(str(out)), {"format": fmt, "model_config": json.loads(config), "source": ref}


def classification_cfg(ref: str):
    from components.training.config import TrainConfig

    return TrainConfig.model_validate({"task": "classification", "data": {"root": "unused"}, "model": {
        "name": "vit_demo", "head": "linear", "init_from": ref}})


def test_timm_name_loads_the_cached_weights_offline(tmp_path):
    from components.models.hub import weight_mismatches
    from components.tasks import get_task
    from components.training.trainer import check_init_weights

    saved = tiny_timm_state()
    put_in_hub_cache(tmp_path / "hf", f"timm/{TIMM_NAME}",
                     {"model.safetensors": saved, "config.json": b'{"architecture": "vit_tiny_patch16_224"}'})
    ref = f"timm:{TIMM_NAME}"
    loaded, meta = load_offline(tmp_path / "hf", ref, tmp_path)
    assert meta["format"] == "timm" and meta["model_config"] == {"num_classes": 7}
    expected = convert_timm_vit(saved)
    assert sorted(loaded) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key

    # the driver's check passes and the weights land in the model the workers build
    cfg = classification_cfg(ref)
    check_init_weights(cfg, loaded, meta, num_classes=3, image_size=64)
    model = get_task(cfg.task).build_model(cfg, num_classes=3, image_size=64, init_state=loaded, init_meta=meta)
    own = model.state_dict()
    assert torch.equal(own["backbone.blocks.3.mlp.fc2.weight"], saved["blocks.3.mlp.fc2.weight"])
    assert torch.equal(own["backbone.pos_embed"], saved["pos_embed"])
    assert own["head.fc.weight"].shape[0] == 3  # a fresh head for the 3 classes
    assert weight_mismatches(model, loaded, allow_missing=True, ignore_prefixes=("head.",)) == []


def test_hf_repo_at_a_revision_loads_offline(tmp_path):
    """``hf:org/name@rev``: a vitpipe checkpoint pushed to the hub (vitpipe.json + weights)."""
    from components.core.checkpoint import CheckpointMeta, save_checkpoint
    from components.models import build_model

    model = build_model("vit_demo", num_classes=4, img_size=64, head="linear")
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model.state_dict(), CheckpointMeta(
        model_name="vit_demo", task="classification", model_config=dict(model.build_config),
        class_names=list("abcd"), image_size=64, patch_size=16))
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    other = "fedcba9876543210fedcba9876543210fedcba98"
    put_in_hub_cache(tmp_path / "hf", "someone/vit-demo", files, revision=other, ref="v1")
    loaded, meta = load_offline(tmp_path / "hf", f"hf:someone/vit-demo@{other}", tmp_path)
    assert meta["format"] == "vitpipe" and meta["model_config"]["num_classes"] == 4
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_mismatched_weights_are_named_in_one_error_before_training(tmp_path):
    """A ViT of another width and depth under the name: one error names the keys and shapes."""
    from components.core.config import ConfigError
    from components.training.trainer import check_init_weights

    put_in_hub_cache(tmp_path / "hf", f"timm/{TIMM_NAME}",
                     {"model.safetensors": tiny_timm_state(embed_dim=64, depth=5, num_heads=2)})
    ref = f"timm:{TIMM_NAME}"
    loaded, meta = load_offline(tmp_path / "hf", ref, tmp_path)
    with pytest.raises(ConfigError) as err:
        check_init_weights(classification_cfg(ref), loaded, meta, num_classes=3, image_size=64)
    text = str(err.value)
    assert text.startswith(f"model.init_from={ref} does not fit vit_demo (")
    assert "unexpected backbone.blocks.4.norm1.weight (64,)" in text
    assert "... and " in text and " more" in text  # every block's keys: cut, with the count
    # fewer differences: a shallower ViT (missing blocks), a narrower one (shapes, both sides)
    shallower = convert_timm_vit(tiny_timm_state(depth=3))
    with pytest.raises(ConfigError, match=r"missing backbone\.blocks\.3\.norm1\.weight \(96,\)"):
        check_init_weights(classification_cfg(ref), shallower, meta, num_classes=3, image_size=64)
    with pytest.raises(ConfigError, match=r"shape backbone\.cls_token: weights \(1, 1, 64\) vs model "
                                          r"\(1, 1, 96\)"):
        check_init_weights(classification_cfg(ref), convert_timm_vit(tiny_timm_state(
            embed_dim=64, num_heads=2)), meta, num_classes=3, image_size=64)


TRY = """
    from components.models.hub import HubWeightsError, load_hub_weights
    for ref in {refs!r}:
        try:
            load_hub_weights(ref)
            print("LOADED", ref)
        except HubWeightsError as err:
            print("ERROR", ref, "|", err)
"""


def test_pickles_are_refused_and_missing_names_explained(tmp_path):
    put_in_hub_cache(tmp_path / "hf", "someone/pickled",
                     {"pytorch_model.bin": b"\x80\x04not-unpickled", "config.json": b"{}"})
    refs = ["hf:someone/pickled", "hf:someone/absent", "timm:vit_tiny_patch16_224.nosuchtag",
            "hf:not-a-repo-id"]
    proc = run_offline(tmp_path / "hf", TRY.format(refs=refs))
    lines = dict(line.split(" | ", 1) for line in proc.stdout.strip().splitlines())
    assert sorted(lines) == sorted(f"ERROR {r}" for r in refs), proc.stdout + proc.stderr[-3000:]
    assert "holds only pickled weights (pytorch_model.bin)" in lines["ERROR hf:someone/pickled"]
    assert "never unpickles" in lines["ERROR hf:someone/pickled"]
    assert "is not in the hub cache" in lines["ERROR hf:someone/absent"]
    assert "timm has no pretrained weights named 'vit_tiny_patch16_224.nosuchtag'" in \
        lines["ERROR timm:vit_tiny_patch16_224.nosuchtag"]
    assert "needs <org>/<name>" in lines["ERROR hf:not-a-repo-id"]
