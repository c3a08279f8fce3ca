"""Resume state beside a checkpoint, without pickle: safetensors for tensors, JSON for the rest.

Files written into a checkpoint directory (next to ``model.safetensors`` + ``vitpipe.json``):

- ``optimizer.safetensors`` + ``train_state.json`` (rank 0): the optimizer's per-parameter
  tensors, flattened to ``state.<param_id>.<key>``; the JSON holds the optimizer's
  skeleton (param groups, scalar state), the scheduler and grad-scaler state and the
  progress (``global_step``, ``epoch``, ``batch_in_epoch``, ``samples_seen``,
  ``world_size``, ``train_seconds``).
- ``rng_rank<r>.safetensors`` + ``rng_rank<r>.json`` (every rank): torch CPU/CUDA, numpy
  and Python RNG states. Ray Train merges the ranks' directories into one checkpoint.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"


@dataclass
class Progress:
    """Where training stands: optimizer steps taken and the data position."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches this rank consumed in ``epoch``
    samples_seen: int = 0  # over all ranks
    world_size: int = 0  # workers that wrote this progress (0: not recorded)
    train_seconds: float = 0.0  # seconds of fitting so far (rank 0's clock; validation and checkpoints excluded)


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` → (tensors, JSON-able skeleton). Inverse: :func:`unflatten_optimizer`."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    skeleton = {
        "param_groups": state_dict["param_groups"],
        "scalars": scalars,
        "tensor_keys": sorted(tensors),
    }
    return tensors, skeleton


def unflatten_optimizer(tensors: dict[str, torch.Tensor], skeleton: dict) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key in skeleton["tensor_keys"]:
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = tensors[key]
    for pid, entry in skeleton["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    return {"state": state, "param_groups": skeleton["param_groups"]}


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def save_train_state(directory: str | Path, *, optimizer: torch.optim.Optimizer,
                     scheduler: Any, scaler: Any, progress: Progress) -> None:
    """Rank 0: optimizer + scheduler + scaler + progress into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = flatten_optimizer(optimizer.state_dict())
    save_file(tensors, str(directory / OPTIM_FILE))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    payload = {
        "optimizer": skeleton,
        "scheduler": _jsonable(sched),
        "scaler": _jsonable(scaler.state_dict()) if scaler is not None and scaler.is_enabled() else None,
        "progress": asdict(progress),
    }
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=1))


def load_train_state(directory: str | Path, *, optimizer: torch.optim.Optimizer,
                     scheduler: Any, scaler: Any) -> Progress:
    """Restore what :func:`save_train_state` wrote; returns the progress to continue from."""
    directory = Path(directory)
    payload = json.loads((directory / STATE_FILE).read_text())
    tensors = load_file(str(directory / OPTIM_FILE))
    optimizer.load_state_dict(unflatten_optimizer(tensors, payload["optimizer"]))
    sched = dict(payload["scheduler"])
    sched["lr_lambdas"] = [None] * len(optimizer.param_groups)
    scheduler.load_state_dict(sched)
    if scaler is not None and payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    return Progress(**payload["progress"])


def has_train_state(directory: str | Path) -> bool:
    return (Path(directory) / STATE_FILE).is_file() and (Path(directory) / OPTIM_FILE).is_file()


def read_progress(directory: str | Path) -> Progress:
    return Progress(**json.loads((Path(directory) / STATE_FILE).read_text())["progress"])


def save_rng(directory: str | Path, rank: int) -> None:
    """Every rank: its RNG states as ``rng_rank<rank>.{safetensors,json}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(directory / f"rng_rank{rank}.safetensors"))
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    (directory / f"rng_rank{rank}.json").write_text(json.dumps(meta))


def load_rng(directory: str | Path, rank: int) -> bool:
    """Restore this rank's RNG states if the checkpoint holds them; returns whether it did."""
    directory = Path(directory)
    path = directory / f"rng_rank{rank}.safetensors"
    if not path.is_file():
        return False
    tensors = load_file(str(path))
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    meta = json.loads((directory / f"rng_rank{rank}.json").read_text())
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    return True
