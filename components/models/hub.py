"""Pretrained weights by name: ``timm:<model>[.<tag>]`` and ``hf:<repo_id>[@<revision>]``.

Both resolve through the libraries' own Hugging Face hub cache (``HF_HOME``,
``HF_HUB_CACHE``), so ``HF_HUB_OFFLINE=1`` serves them from the cache with no network:

- ``timm:vit_small_patch16_224.augreg_in21k``: timm's ``pretrained_cfg`` for that name gives
  the hub repository (``hf_hub_id``, e.g. ``timm/vit_small_patch16_224.augreg_in21k``);
  its ``model.safetensors`` is the timm state dict;
- ``hf:facebook/detr-resnet-50@<revision>``: the repository's snapshot (``main`` unless a
  revision is given): a vitpipe checkpoint (``vitpipe.json`` + ``model.safetensors``) as it
  is, else ``model.safetensors`` (or its shards, ``model.safetensors.index.json``) read as a
  timm or transformers state dict (``import_weights.detect_format``).

Only safetensors are read: a repository holding nothing but pickles (``pytorch_model.bin``,
``*.pth``) is refused with a clear error, never unpickled. The weights are converted to
vitpipe names; :func:`weight_mismatches` compares them with a model before training starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

PREFIXES = ("timm:", "hf:")
SAFETENSORS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
PICKLES = ("pytorch_model.bin", "model.pth", "model.pt", "pytorch_model.bin.index.json")


class HubWeightsError(ValueError):
    """A hub reference that cannot give weights (unknown name, not cached offline, pickles only)."""


@dataclass(frozen=True)
class HubRef:
    """A parsed reference: the hub repository, its revision, and the timm model name if any."""

    kind: str  # "timm" or "hf"
    repo_id: str
    revision: str | None = None
    timm_name: str | None = None


def is_hub_ref(ref: str) -> bool:
    return ref.startswith(PREFIXES)


def parse_hub_ref(ref: str) -> HubRef:
    """``timm:<model>[.<tag>]`` / ``hf:<org>/<name>[@<revision>]`` → :class:`HubRef`."""
    if ref.startswith("timm:"):
        name = ref[len("timm:"):]
        if not name:
            raise HubWeightsError("timm: needs a model name, e.g. timm:vit_small_patch16_224.augreg_in21k")
        import timm.models

        try:
            cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
        except Exception as err:  # timm raises RuntimeError for unknown names or tags
            raise HubWeightsError(f"timm has no pretrained weights named {name!r}: {err}") from None
        if cfg is None or not getattr(cfg, "hf_hub_id", None):
            raise HubWeightsError(f"timm's pretrained config for {name!r} names no hub repository")
        return HubRef("timm", cfg.hf_hub_id, None, name)
    if ref.startswith("hf:"):
        body = ref[len("hf:"):]
        repo_id, _, revision = body.partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise HubWeightsError(f"hf: needs <org>/<name>[@<revision>], got {body!r}")
        return HubRef("hf", repo_id, revision or None)
    raise HubWeightsError(f"{ref!r} is not a hub reference ({' or '.join(PREFIXES)})")


def snapshot(ref: HubRef) -> Path:
    """The local snapshot folder of ``ref`` from the hub cache (only safetensors and JSON
    files are fetched); downloaded first unless ``HF_HUB_OFFLINE=1``."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(ref.repo_id, revision=ref.revision,
                                      allow_patterns=["*.safetensors", "*.json"]))
    except LocalEntryNotFoundError:
        raise HubWeightsError(
            f"{ref.repo_id}{'@' + ref.revision if ref.revision else ''} is not in the hub cache "
            "(HF_HUB_OFFLINE is set, or the hub cannot be reached); download it first with "
            f"`huggingface-cli download {ref.repo_id}`") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise HubWeightsError(f"cannot fetch {ref.repo_id}: {err}") from None
    return path


def read_safetensors(folder: Path, repo_id: str) -> dict[str, torch.Tensor]:
    """``model.safetensors`` or its shards in ``folder``; pickles are refused."""
    from safetensors.torch import load_file

    if (folder / SAFETENSORS).is_file():
        return load_file(str(folder / SAFETENSORS))
    if (folder / SHARD_INDEX).is_file():
        index = json.loads((folder / SHARD_INDEX).read_text())
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            if "/" in shard or shard.startswith("."):
                raise HubWeightsError(f"{repo_id}: shard name {shard!r} escapes the snapshot")
            state.update(load_file(str(folder / shard)))
        return state
    pickles = [p.name for p in folder.iterdir() if p.name in PICKLES or p.suffix in (".bin", ".pth", ".pt")]
    if pickles:
        raise HubWeightsError(
            f"{repo_id} holds only pickled weights ({', '.join(sorted(pickles))}); vitpipe never "
            "unpickles downloaded files: use a revision with model.safetensors")
    raise HubWeightsError(f"{repo_id} has no {SAFETENSORS} (pickled weights, .bin / .pth, "
                          "are never read)")


def load_hub_weights(ref_text: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A hub reference → ``(state dict in vitpipe names, meta dict)``.

    ``meta`` is a vitpipe checkpoint's meta (its ``model_config`` and all) when the snapshot
    is one; else ``{"model_config": {"num_classes": C}}`` with ``C`` read from a classifier
    head when there is one, plus ``{"source": ref_text, "format": <detected format>}``.
    """
    from components.models.import_weights import _CONVERTERS, detect_format

    ref = parse_hub_ref(ref_text)
    folder = snapshot(ref)
    if (folder / "vitpipe.json").is_file():
        from dataclasses import asdict

        from components.core.checkpoint import load_checkpoint

        state, meta = load_checkpoint(folder)
        return state, {**asdict(meta), "source": ref_text, "format": "vitpipe"}
    raw = read_safetensors(folder, ref.repo_id)
    fmt = "timm" if ref.kind == "timm" else detect_format(raw)
    state = _CONVERTERS[fmt](raw)
    config: dict[str, Any] = {}
    head = state.get("head.fc.weight")
    if head is not None:
        config["num_classes"] = int(head.shape[0])
    return state, {"model_config": config, "source": ref_text, "format": fmt}


def weight_mismatches(model: nn.Module, state: Mapping[str, torch.Tensor], *,
                      allow_missing: bool, ignore_prefixes: tuple[str, ...] = ()) -> list[str]:
    """What keeps ``state`` from loading into ``model``, one line per problem (empty: fits):
    unexpected keys, then missing ones, then shapes (in the model's order).

    Shape differences of the model's position embeddings (``model.pos_embed_layout()``) are
    not problems (``load_weights`` resizes them). ``allow_missing``: model keys absent from
    ``state`` start fresh (a detector initialised from a classifier); keys under
    ``ignore_prefixes`` in ``state`` are dropped anyway (a classifier's head)."""
    own = model.state_dict()
    resized = set(model.pos_embed_layout()) if hasattr(model, "pos_embed_layout") else set()
    kept = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    missing = [k for k in own if k not in kept and not k.endswith("num_batches_tracked")]
    problems = ["no weight matches the model"] if len(missing) == len(own) else []
    problems += [f"unexpected {k} {tuple(kept[k].shape)}" for k in sorted(kept) if k not in own]
    if not allow_missing:
        problems += [f"missing {k} {tuple(own[k].shape)}" for k in missing]
    problems += [f"shape {k}: weights {tuple(kept[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in own if k in kept and kept[k].shape != own[k].shape and k not in resized]
    return problems
