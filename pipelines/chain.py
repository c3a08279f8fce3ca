"""The pipeline chain as one Ray job driver: pretrain → fine-tune → detect → promotion gates
→ BCCD detection on real photographs.

    python -m pipelines.chain --config pipelines/configs/chain_demo.yaml [key=value ...] [--out FILE]
    ray job submit --working-dir . -- python -m pipelines.chain --config ... data_root=... storage_path=...

Each stage is the function its own entrypoint runs (``pipelines.pretrain.pretrain``, ...),
called in this process; a stage gets the typed result of the ones before it (the pretrained
checkpoint for ``model.init_from``, each registered version for its gate). The gate judges
every model the chain made: the pretrained classifier, then the fine-tuned one against
whichever is ``@champion`` by then (re-measured on the same val split), then the detector.

The ``bccd`` stage (optional: present when ``stages`` names it) trains a detector on the BCCD
microscope photographs at ``bccd_root`` (Pascal VOC), sends its registered version through
the same gate under its own registered name (judged on BCCD's val list), then scores that
version on BCCD's **test** list with the shared evaluator and reports its test mAP50. When
``bccd_root`` is not a folder the stage is skipped with one line; the rest of the chain runs.

Every stage config is validated before the first one trains. Progress: one line per
training stage (see :mod:`components.training.progress`), then a ``[chain]`` line with
its result; ``--out`` also writes all results as JSON. Exit 2 on a config or user mistake.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from components.core.config import ConfigError, StrictModel, load_config
from components.tracking.promotion import PromoteConfig, PromotionResult, measure
from components.tracking.registry import fetch_checkpoint
from components.training.config import TrainConfig
from pipelines import detect as detect_stage
from pipelines import finetune as finetune_stage
from pipelines import pretrain as pretrain_stage
from pipelines._common import TrainResult, user_errors
from pipelines.promote import gate

TRAIN_STAGES = ("pretrain", "finetune", "detect")
STAGE_FUNCTIONS = {"pretrain": (pretrain_stage.pretrain, pretrain_stage.check),
                   "finetune": (finetune_stage.finetune, finetune_stage.check),
                   "detect": (detect_stage.detect, detect_stage.check),
                   "bccd": (detect_stage.detect, detect_stage.check)}
BCCD = "bccd"                      # the optional stage on the BCCD photographs (Pascal VOC)
BCCD_TEST_SPLIT = "test"           # the list it is scored on, after the gate (judged on val)
# (result name, task, data format, the training stage whose registered version it judges)
GATES = (("promote-pretrained", "classification", "imagefolder", "pretrain"),
         ("promote-classification", "classification", "imagefolder", "finetune"),
         ("promote-detection", "detection", "coco", "detect"))


class StageSpec(StrictModel):
    config: str
    overrides: list[str] = Field(default_factory=list)
    # finetune / detect: start from the pretrain stage's checkpoint (model.init_from)
    init_from_pretrain: bool = True


class ChainConfig(StrictModel):
    name: str = "chain"              # run names: <name>-<stage>-<tag>
    tag: str | None = None           # None: the start time, %Y%m%d-%H%M%S
    data_root: str                   # the dataset every stage reads (imagefolder/ + COCO)
    storage_path: str                # Ray Train's storage for every run
    data_concurrency: int | None = Field(None, ge=1)  # data.concurrency of every stage; None: cores
    cache_dir: str = "~/.cache/vitpipe/models"        # the gates' model cache
    # The BCCD dataset (Pascal VOC folder) the bccd stage reads; a relative path is taken from
    # the chain's working directory. Not a folder: the stage is skipped.
    bccd_root: str = "../shared/data/bccd/BCCD"
    stages: dict[str, StageSpec]
    promote: StageSpec

    def concurrency(self) -> int:
        return self.data_concurrency or max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class BccdResult:
    """The bccd stage: its training run, its gate decision, and the registered version's
    scores on BCCD's test list (``coco_metrics``: map, map50, map75, per_class_ap, ...)."""

    train: TrainResult
    gate: PromotionResult
    test_metrics: dict[str, Any]
    split: str = BCCD_TEST_SPLIT

    @property
    def test_map50(self) -> float:
        return float(self.test_metrics["map50"])

    def to_dict(self) -> dict[str, Any]:
        return {**self.train.to_dict(), "test_split": self.split, "test_metrics": dict(self.test_metrics)}

    def describe(self) -> str:
        per_class = "  ".join(f"{name} {ap:.4f}" for name, ap in
                              (self.test_metrics.get("per_class_ap") or {}).items() if ap is not None)
        return (f"{self.gate.model} v{self.train.registered_version} test mAP50 {self.test_map50:.4f}  "
                f"mAP {float(self.test_metrics['map']):.4f}  on {self.test_metrics.get('num_images', '?')} "
                f"{self.split} photos{'  AP ' + per_class if per_class else ''}")


@dataclass(frozen=True)
class ChainResult:
    """Every stage's typed result, in the order they ran."""

    pretrain: TrainResult
    finetune: TrainResult
    detect: TrainResult
    gates: tuple[tuple[str, PromotionResult], ...]
    seconds: float
    bccd: BccdResult | None = None
    bccd_skipped: str | None = None  # why the bccd stage did not run (None: it ran or is not configured)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {r.stage: r.to_dict() for r in (self.pretrain, self.finetune, self.detect)}
        out.update({name: result.to_dict() for name, result in self.gates})
        if self.bccd is not None:
            out[BCCD] = self.bccd.to_dict()
            out[f"promote-{BCCD}"] = self.bccd.gate.to_dict()
        elif self.bccd_skipped is not None:
            out[BCCD] = {"skipped": self.bccd_skipped}
        return out


def train_overrides(cfg: ChainConfig, stage: str, tag: str, init_from: str | None) -> list[str]:
    spec = cfg.stages[stage]
    data_root = cfg.bccd_root if stage == BCCD else cfg.data_root
    overrides = [f"data.root={data_root}", f"data.concurrency={cfg.concurrency()}",
                 f"run.storage_path={cfg.storage_path}", f"run.name={cfg.name}-{stage}-{tag}", *spec.overrides]
    if init_from is not None and stage not in ("pretrain", BCCD) and spec.init_from_pretrain:
        overrides.append(f"model.init_from={init_from}")
    return overrides


def gate_overrides(cfg: ChainConfig, task: str, fmt: str, candidate: str | None, *,
                   data_root: str | None = None, model: str | None = None) -> list[str]:
    """The gate's config overrides: ``data_root`` (default the chain's data) in format ``fmt``,
    ``model`` the registered name (default the task's: vitpipe-classifier / -detector)."""
    overrides = [f"task={task}", f"data.format={fmt}", f"data.root={data_root or cfg.data_root}",
                 f"data.concurrency={cfg.concurrency()}"]
    if model is not None:
        overrides.append(f"model={model}")
    if candidate is not None:
        overrides.append(f"candidate={candidate}")
    return [*overrides, f"cache_dir={cfg.cache_dir}", *cfg.promote.overrides]


def bccd_missing(cfg: ChainConfig) -> str | None:
    """Why the bccd stage cannot run here (its data is not a folder); None when it can."""
    if BCCD not in cfg.stages:
        return None
    from components.data.fs import join_uri, uri_is_dir

    if not uri_is_dir(join_uri(cfg.bccd_root, "ImageSets", "Main")):
        return (f"no BCCD data at {cfg.bccd_root} (a Pascal VOC folder with ImageSets/Main); "
                "set bccd_root=DIR to run it")
    return None


def bccd_gate_config(cfg: ChainConfig, registered_name: str, candidate: str | None) -> PromoteConfig:
    """The gate for the bccd stage's detector: its own registered name, BCCD's val list."""
    return load_config(PromoteConfig, cfg.promote.config,
                       gate_overrides(cfg, "detection", "voc", candidate, data_root=cfg.bccd_root,
                                      model=registered_name))


def score_registered(gate_cfg: PromoteConfig, version: str, split: str) -> dict[str, Any]:
    """Evaluate a registered version on ``split`` with the shared evaluator (the gate's own
    measurement, on another list of the same data): COCO mAP, mAP50, per-class AP."""
    checkpoint = fetch_checkpoint(gate_cfg.registered_name, version, cache_dir=Path(gate_cfg.cache_dir).expanduser(),
                                  tracking_uri=gate_cfg.tracking_uri)
    return measure(checkpoint, gate_cfg.model_copy(update={"split": split}))


def load_stage(cfg: ChainConfig, stage: str, tag: str, init_from: str | None) -> TrainConfig:
    from components.training.config import load_train_config

    _, check = STAGE_FUNCTIONS[stage]
    return load_train_config(cfg.stages[stage].config, train_overrides(cfg, stage, tag, init_from), check=check)


def validate(cfg: ChainConfig, tag: str) -> None:
    """Every stage's config as it will run (the hand-offs stand in), before anything trains."""
    missing = [s for s in TRAIN_STAGES if s not in cfg.stages]
    if missing:
        raise ConfigError(f"chain config lacks stages: {', '.join(missing)}")
    for stage in TRAIN_STAGES:
        load_stage(cfg, stage, tag, init_from="pending-pretrain-checkpoint")
    for _, task, fmt, _ in GATES:
        load_config(PromoteConfig, cfg.promote.config, gate_overrides(cfg, task, fmt, None))
    if BCCD in cfg.stages and bccd_missing(cfg) is None:
        bccd = load_stage(cfg, BCCD, tag, init_from=None)
        if not bccd.registry.enabled:
            raise ConfigError("the bccd stage must register its model (registry.enabled) for its gate")
        bccd_gate_config(cfg, bccd.registry.registered_name, None)


def run_chain(cfg: ChainConfig, *, say=print) -> ChainResult:
    """Run every stage in this process; ``say`` gets one line per finished stage."""
    started = time.monotonic()
    tag = cfg.tag or time.strftime("%Y%m%d-%H%M%S")
    validate(cfg, tag)
    results: dict[str, TrainResult] = {}
    for stage in TRAIN_STAGES:
        run, _ = STAGE_FUNCTIONS[stage]
        init_from = results["pretrain"].checkpoint if "pretrain" in results else None
        stage_cfg = load_stage(cfg, stage, tag, init_from)
        say(f"[chain] {stage}: {stage_cfg.run.name} started")
        results[stage] = run(stage_cfg, config_text=Path(cfg.stages[stage].config).read_text())
        say(f"[chain] {stage}: {results[stage].describe()}")
    gates = []
    for name, task, fmt, stage in GATES:
        candidate = results[stage].registered_version
        if candidate is None:
            raise ConfigError(f"{name}: the {stage} stage registered no model (registry.enabled)")
        decision = gate(load_config(PromoteConfig, cfg.promote.config, gate_overrides(cfg, task, fmt, candidate)))
        gates.append((name, decision))
        say(f"[chain] {name}: {_describe_gate(decision)}")
    bccd, skipped = None, bccd_missing(cfg)
    if skipped is not None:
        say(f"[chain] {BCCD}: skipped: {skipped}")
    elif BCCD in cfg.stages:
        bccd = run_bccd(cfg, tag, say=say)
    return ChainResult(results["pretrain"], results["finetune"], results["detect"], tuple(gates),
                       round(time.monotonic() - started, 1), bccd=bccd, bccd_skipped=skipped)


def run_bccd(cfg: ChainConfig, tag: str, *, say=print) -> BccdResult:
    """Train the BCCD detector, gate its registered version, score it on the test list."""
    run, _ = STAGE_FUNCTIONS[BCCD]
    stage_cfg = load_stage(cfg, BCCD, tag, init_from=None)
    say(f"[chain] {BCCD}: {stage_cfg.run.name} started")
    trained = dataclasses.replace(run(stage_cfg, config_text=Path(cfg.stages[BCCD].config).read_text()), stage=BCCD)
    say(f"[chain] {BCCD}: {trained.describe()}")
    if trained.registered_version is None:
        raise ConfigError(f"promote-{BCCD}: the {BCCD} stage registered no model (registry.enabled)")
    gate_cfg = bccd_gate_config(cfg, stage_cfg.registry.registered_name, trained.registered_version)
    decision = gate(gate_cfg)
    say(f"[chain] promote-{BCCD}: {_describe_gate(decision)}")
    metrics = score_registered(gate_cfg, trained.registered_version, BCCD_TEST_SPLIT)
    result = BccdResult(trained, decision, {k: v for k, v in metrics.items() if not k.startswith("_")})
    say(f"[chain] {BCCD}: {result.describe()}")
    return result


def _describe_gate(result: PromotionResult) -> str:
    from components.cli.registry import describe

    return describe(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.chain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="chain YAML config (pipelines/configs/chain_*.yaml)")
    parser.add_argument("--out", default=None, help="also write every stage's result here (JSON)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the chain config")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from components.training.progress import LiveProgress

    try:
        cfg = load_config(ChainConfig, args.config, args.overrides)
        with LiveProgress() as live:
            def say(text: str) -> None:
                live.flush()
                live.say(text)

            result = run_chain(cfg, say=say)
    except user_errors() as err:
        print(f"chain: error: {err}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(result.to_dict(), indent=1, default=str))
    print(f"[chain] done in {result.seconds:.0f}s: {', '.join(result.to_dict())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
