"""Promotion by evidence, end to end against a real ``mlflow server`` and a real Ray Data
validation split: first version promoted, the better one promoted, the worse one refused
(``@challenger``), manual rollback through the CLI, history and listing, bad requests."""

from __future__ import annotations

import json
import uuid

import mlflow
import pytest
import torch

from components.cli.main import main as cli
from components.core.config import ConfigError
from components.data.config import DataConfig
from components.tracking import registry
from components.tracking.history import read_history
from components.tracking.promotion import PromoteConfig, promote
from components.tracking.registry import RegistryError, register_checkpoint, resolve_uri
from components.evaluation import evaluate_classification

from tracking_helpers import make_checkpoint

IMAGE_SIZE = 64  # vit_demo's input


def _data_cfg(root) -> DataConfig:
    return DataConfig(format="imagefolder", root=str(root), image_size=IMAGE_SIZE,
                      patch_size=16, validate_images=False)


@pytest.fixture(scope="module")
def scenario(ray_cluster, synth_dataset, mlflow_server, tmp_path_factory):
    """Two random-weight classifiers and one with a head fitted on the val split to beat them."""
    from components.data.dataset import build_dataset
    from components.data.loader import iter_batches
    from components.models import build_model

    root = tmp_path_factory.mktemp("promotion")
    bundle = build_dataset(_data_cfg(synth_dataset), "val", training=False)
    classes = list(bundle.class_names)
    batches = list(iter_batches(bundle.dataset, batch_size=64, task="classification",
                                device="cpu"))
    torch.manual_seed(0)
    model = build_model("vit_demo", num_classes=len(classes))
    # A linear probe on the split itself (features computed once, only the head trains):
    # cheap, and far above the random-weight models it must beat.
    model.eval()
    with torch.no_grad():
        feats = [model.forward_features(model.normalize_patches(b["patches"], (4, 4)))
                 for b in batches]
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-2)
    for _ in range(150):
        for f, batch in zip(feats, batches):
            loss = torch.nn.functional.cross_entropy(model.head(f), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    # Measured independently here, with the shared evaluator on the same batches.
    strong_top1 = evaluate_classification(model, batches, device="cpu",
                                          num_classes=len(classes))["top1"]
    assert strong_top1 >= 0.8, f"the fixture's fit failed (top1 {strong_top1:.2f})"
    common = dict(num_classes=len(classes), class_names=classes)
    return {
        "data": synth_dataset,
        "weak_a": make_checkpoint(root / "weak_a", seed=1, **common),
        "strong": make_checkpoint(root / "strong", seed=2, state_dict=model.state_dict(),
                                  **common),
        "weak_b": make_checkpoint(root / "weak_b", seed=3, **common),
        "cache": root / "cache",
        "strong_top1": strong_top1,
    }


def _cfg(scenario, name, **kw) -> PromoteConfig:
    return PromoteConfig(task="classification", model=name, data=_data_cfg(scenario["data"]),
                         batch_size=16, device="cpu", cache_dir=str(scenario["cache"]), **kw)


@pytest.mark.slow
def test_promote_better_refuse_worse_roll_back(scenario, mlflow_uri, capsys):
    name = f"test-promo-{uuid.uuid4().hex[:8]}"
    mlf = registry.client(mlflow_uri)

    def reg(key):
        return register_checkpoint(scenario[key], task="classification", registered_name=name,
                                   tracking_uri=mlflow_uri)

    # 1. The first version has no champion to beat: promoted.
    assert reg("weak_a") == "1"
    first = promote(_cfg(scenario, name))
    assert (first.decision, first.candidate, first.champion) == ("first", "1", None)
    assert resolve_uri(f"models:/{name}@champion").version == "1"

    # 2. The fitted model beats it on the same validation data, re-measured now.
    assert reg("strong") == "2"
    second = promote(_cfg(scenario, name, margin=0.05))
    assert second.decision == "promoted" and second.champion == "1"
    assert second.candidate_score > second.champion_score + 0.05
    assert second.candidate_score == pytest.approx(scenario["strong_top1"])  # re-measured
    assert second.champion_score == pytest.approx(first.candidate_score)  # same data, same model
    assert resolve_uri(f"models:/{name}@champion").version == "2"
    tags = mlf.get_model_version(name, "2").tags
    assert tags["promotion.decision"] == "promoted"
    assert float(tags["promotion.candidate_score"]) == pytest.approx(second.candidate_score,
                                                                     rel=1e-5)
    assert tags["promotion.champion_version"] == "1"
    comparison = mlflow.artifacts.load_dict(f"runs:/{second.run_id}/comparison.json")
    assert comparison["decision"] == "promoted"
    assert comparison["candidate_metrics"]["confusion"] and comparison["champion_metrics"]["top1"]

    # 3. A weak candidate does not displace it: refused, becomes @challenger.
    assert reg("weak_b") == "3"
    third = promote(_cfg(scenario, name))
    assert third.decision == "refused" and third.alias_set == "challenger"
    assert third.champion_score == pytest.approx(second.candidate_score)
    assert resolve_uri(f"models:/{name}@champion").version == "2"
    assert resolve_uri(f"models:/{name}@challenger").version == "3"
    assert mlf.get_model_version(name, "3").tags["promotion.decision"] == "refused"

    # 4. Manual rollback through the CLI, recorded as manual.
    rc = cli(["registry", "promote", "--model", name, "--version", "1", "--alias", "champion",
              "--reason", "rollback drill"])
    assert rc == 0
    assert resolve_uri(f"models:/{name}@champion").version == "1"

    # 5. History and listing tell the story.
    events = read_history(mlf, name)
    assert [(e["action"], e["alias"], e["version"], e["previous"]) for e in events] == [
        ("first", "champion", "1", None),
        ("promoted", "champion", "2", "1"),
        ("refused", "challenger", "3", None),
        ("manual", "champion", "1", "2"),
    ]
    capsys.readouterr()
    assert cli(["registry", "history", "--model", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[-1]["reason"] == "rollback drill"
    assert cli(["registry", "history", "--model", name]) == 0
    assert "rollback drill" in capsys.readouterr().out
    assert cli(["registry", "list", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}[name]
    assert listed["task"] == "classification"
    assert listed["aliases"] == {"challenger": "3", "champion": "1"}
    assert [v["version"] for v in listed["versions"]] == ["3", "2", "1"]
    assert listed["versions"][1]["promotion"]["decision"] == "promoted"
    assert cli(["registry", "list"]) == 0
    assert f"@champion=v1" in capsys.readouterr().out

    # 6. The CLI gate: v2 re-measured against the rolled-back champion v1 wins again.
    assert cli(["registry", "promote", "--model", name, "--candidate", "2", "--json",
                f"data.root={scenario['data']}", f"cache_dir={scenario['cache']}",
                "device=cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["decision"] == "promoted"
    assert resolve_uri(f"models:/{name}@champion").version == "2"


def test_bad_requests_move_no_alias(scenario, mlflow_uri, capsys):
    name = f"test-promo-bad-{uuid.uuid4().hex[:8]}"
    register_checkpoint(scenario["weak_a"], task="classification", registered_name=name,
                        tracking_uri=mlflow_uri)
    mlf = registry.client(mlflow_uri)
    mlf.set_registered_model_alias(name, "champion", "1")

    with pytest.raises(RegistryError, match="no version 7"):
        promote(_cfg(scenario, name, candidate="7"))
    with pytest.raises(RegistryError, match="does not exist"):
        promote(_cfg(scenario, "no-such-model-" + uuid.uuid4().hex[:6]))
    # A detection config for a classifier: refused (the data would be of another task, too).
    with pytest.raises(ConfigError, match="gives classification data"):
        from components.core.config import load_config

        load_config(PromoteConfig, None, ["task=detection", "data.format=imagefolder",
                                          f"data.root={scenario['data']}"])
    det_cfg = PromoteConfig(task="detection", model=name, data=DataConfig(
        format="coco", root=str(scenario["data"]), image_size=IMAGE_SIZE), device="cpu",
        cache_dir=str(scenario["cache"]))
    with pytest.raises(RegistryError, match="classification model, not detection"):
        promote(det_cfg)
    # The same through the CLI: exit code 2, one line, no traceback.
    capsys.readouterr()
    assert cli(["registry", "promote", "--model", name, "--candidate", "7",
                f"data.root={scenario['data']}"]) == 2
    err = capsys.readouterr().err
    assert "no version 7" in err and "Traceback" not in err
    assert cli(["registry", "promote", "--model", name, "--version", "5",
                "--alias", "champion"]) == 2
    assert cli(["registry", "history", "--model", "no-such-model-zz"]) == 2
    assert cli(["registry", "promote", "--model", name, "--version", "1"]) == 2
    from pipelines.promote import main as promote_pipeline

    assert promote_pipeline(["--config", "pipelines/configs/promote.yaml", f"model={name}",
                             "candidate='7'", f"data.root={scenario['data']}"]) == 2
    assert promote_pipeline(["--config", "pipelines/configs/promote.yaml", "margin=-1"]) == 2
    assert "margin" in capsys.readouterr().err
    assert mlf.get_registered_model(name).aliases == {"champion": "1"}
    assert read_history(mlf, name) == []


def test_detector_first_version_measured_on_coco_val(scenario, mlflow_uri, tmp_path):
    """The detection gate: COCO val split through Ray Data, COCOeval via the shared evaluator."""
    from components.data.dataset import build_dataset

    cfg_data = DataConfig(format="coco", root=str(scenario["data"]), image_size=IMAGE_SIZE,
                          patch_size=16, validate_images=False)
    bundle = build_dataset(cfg_data, "val", training=False)
    name = f"test-promo-det-{uuid.uuid4().hex[:8]}"
    ckpt = make_checkpoint(tmp_path / "det", seed=4, model_name="yolos_demo",
                           num_classes=len(bundle.class_names),
                           class_names=list(bundle.class_names), metrics={"map": 0.0})
    register_checkpoint(ckpt, task="detection", registered_name=name, tracking_uri=mlflow_uri)
    result = promote(PromoteConfig(task="detection", model=name, data=cfg_data, batch_size=8,
                                   device="cpu", cache_dir=str(scenario["cache"])))
    assert result.decision == "first" and result.metric == "map"
    metrics = result.candidate_metrics
    assert metrics["num_images"] == bundle.num_rows
    assert set(metrics["per_class_ap"]) == set(bundle.class_names)
    assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0
    assert resolve_uri(f"models:/{name}@champion").version == "1"


def test_candidate_version_typed_as_a_number_on_the_command_line(tmp_path):
    from components.core.config import load_config

    cfg = load_config(PromoteConfig, None, ["candidate=3", "data.format=imagefolder", f"data.root={tmp_path}"])
    assert cfg.candidate == "3"
    with pytest.raises(ConfigError, match="candidate"):
        load_config(PromoteConfig, None, ["candidate=[3]", "data.format=imagefolder", f"data.root={tmp_path}"])
