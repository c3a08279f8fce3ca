"""The :class:`Task` every stage asks questions of, instead of branching on a task string.

A task owns, for its kind of run: the config check and the model build (overrides checked
against the builder's signature on the driver), the loss (weights fixed at construction,
totalled by ``components.models.criterion.total_loss``), the batch it needs, in-loop
validation, the final evaluation (through ``components.evaluation``), its primary metric and
direction, what its checkpoint holds, and the outputs a served model returns.

``cfg`` arguments are the run's training config (``components.training.config.TrainConfig``,
read only: ``model``, ``optim.label_smoothing``, ``criterion``, ``mae``, ``run.seed``);
this layer sits below training and does not import it.
"""

from __future__ import annotations

import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist

from components.core.config import ConfigError
from components.core.names import ModelTask, TaskName
from components.models.criterion import total_loss
from components.tasks.losses import LossFn

Batch = dict[str, torch.Tensor]
Direction = Literal["max", "min"]
_BUILDER_ARGS = ("num_classes", "img_size")  # set by the task, never an override


def accepted_overrides(model_name: str) -> list[str] | None:
    """The architecture keywords ``model_name``'s builder accepts (``None``: the builder
    takes any keyword, e.g. passed on to timm or a transformers config)."""
    from components.models import get_spec

    spec = get_spec(model_name)
    builder = spec.builder
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    bound = set(getattr(builder, "keywords", {}) or {})  # functools.partial arguments
    return sorted(n for n, p in params.items()
                  if n not in _BUILDER_ARGS and n not in bound
                  and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))


def check_overrides(model_name: str, overrides: Mapping[str, Any]) -> None:
    """``model.overrides`` keys against the builder's signature: a typo is a ``ConfigError``
    naming the bad key and the accepted ones (on the driver, before any worker starts).

    A builder that passes further keywords on to a library (timm) is dry-built on the meta
    device (no memory, no weights), and the library's "unexpected keyword" is reported the
    same way. A transformers config takes any keyword: those are not checked here.
    """
    import re

    accepted = accepted_overrides(model_name)
    if accepted is not None:
        bad = sorted(k for k in overrides if k not in accepted)
        if bad:
            raise ConfigError(f"model.overrides: {', '.join(map(repr, bad))} not accepted by {model_name!r}; "
                              f"accepted: {', '.join(accepted)}")
        return
    from components.models import build_model, get_spec

    spec = get_spec(model_name)
    builder_args = [n for n, p in inspect.signature(spec.builder).parameters.items()
                    if p.kind is not inspect.Parameter.VAR_KEYWORD and n not in _BUILDER_ARGS
                    and n not in set(getattr(spec.builder, "keywords", {}) or {})]
    try:
        with torch.device("meta"):
            build_model(model_name, num_classes=2, **dict(overrides))
    except TypeError as err:
        found = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if found is None:
            raise
        raise ConfigError(f"model.overrides: {found.group(1)!r} not accepted by {model_name!r} "
                          f"({err}); accepted: {', '.join(sorted(builder_args))} and the "
                          "keywords of the library model it wraps") from None
    except (ValueError, KeyError, AssertionError) as err:
        raise ConfigError(f"model.overrides: {model_name!r} does not build with {dict(overrides)}: {err}") from None


def all_reduce_sum(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` summed over the ranks of an initialised process group (as is otherwise)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = values.to(backend_device)
        dist.all_reduce(t)
        return t.cpu()
    return values


class Task(ABC):
    """One kind of training run. Subclasses set the class attributes and the abstract methods.

    Attributes:
        name: the config's ``task``.
        model_task: what the trained model and its checkpoint are (``classification`` /
            ``detection``); the model registry's ``spec.task`` must match it.
        batch_kind: the batch contract the loader collates (``None``: from the data format).
        metric, direction: the final evaluation's primary metric and whether higher is better.
        val_metric, val_direction: the in-loop validation metric that ranks checkpoints.
        registers: whether the final checkpoint is registered for serving.
        serving_outputs: the tensors a served/exported model returns.
        headline_metrics, target_metric: the numbers a summary quotes; the one it targets.
        sample_format: the data format of the built-in synthetic dataset for the task.
    """

    name: ClassVar[TaskName]
    model_task: ClassVar[ModelTask]
    batch_kind: ClassVar[ModelTask | None]
    metric: ClassVar[str]
    direction: ClassVar[Direction]
    val_metric: ClassVar[str] = "val_loss"
    val_direction: ClassVar[Direction] = "min"
    registers: ClassVar[bool] = True
    serving_outputs: ClassVar[tuple[str, ...]] = ()
    # The numbers a summary quotes (report, parity, the demo), the one it targets first, and
    # the layout of the built-in synthetic dataset for the task.
    headline_metrics: ClassVar[tuple[str, ...]] = ()
    target_metric: ClassVar[str] = ""
    sample_format: ClassVar[str] = ""

    # ------------------------------------------------------------------ config and model
    def check_config(self, cfg: Any) -> None:
        """Task rules on the config (raise ``ValueError``); called by the config validator."""

    def checkpoint_ranking(self, metric: str, mode: Direction) -> tuple[str, Direction]:
        """The ``(metric, mode)`` that ranks this task's checkpoints, given the config's."""
        return metric, mode

    def check_model(self, cfg: Any) -> None:
        """The model name fits this task and ``model.overrides`` fit its builder."""
        from components.models import get_spec

        try:
            spec = get_spec(cfg.model.name)
        except KeyError as err:
            raise ConfigError(f"model.name: {err.args[0]}") from None
        if spec.task != self.model_task:
            raise ConfigError(f"model.name: {cfg.model.name!r} is a {spec.task} model; task "
                              f"{self.name!r} needs a {self.model_task} model")
        check_overrides(cfg.model.name, cfg.model.overrides)

    @abstractmethod
    def build_model(self, cfg: Any, *, num_classes: int, image_size: int,
                    init_state: dict[str, torch.Tensor] | None = None,
                    init_meta: dict | None = None) -> torch.nn.Module:
        """The run's model, optionally initialised from a checkpoint's weights."""

    @abstractmethod
    def loss(self, cfg: Any, *, num_classes: int, model: torch.nn.Module | None = None) -> LossFn:
        """``loss_fn(model, batch) -> {term: scalar}`` with a fixed ``loss_fn.weight_dict``."""

    def loader_kind(self, data_format: str | None) -> ModelTask:
        """The batch contract to collate for data of ``data_format``."""
        assert self.batch_kind is not None
        return self.batch_kind

    # ------------------------------------------------------------------ checkpoint content
    def checkpoint_weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The weights saved as ``model.safetensors``."""
        return model.state_dict()

    def save_extra_weights(self, directory: str, model: torch.nn.Module) -> None:
        """Weights beside ``model.safetensors`` that resuming needs (none by default)."""

    def restore_weights(self, model: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                        directory: str) -> None:
        """Inverse of :meth:`checkpoint_weights` + :meth:`save_extra_weights`."""
        model.load_state_dict(state_dict)

    def checkpoint_classes(self, class_names: list[str]) -> list[str]:
        return list(class_names)

    def checkpoint_extra(self, cfg: Any) -> dict[str, Any]:
        """Task entries of the checkpoint metadata's ``extra``."""
        return {}

    # ------------------------------------------------------------------ validation, evaluation
    def _val_batch(self, model: torch.nn.Module, batch: Batch, loss_fn: LossFn) -> tuple[torch.Tensor, float]:
        """``(loss, correct)`` of one val batch (``correct``: 0 where not counted)."""
        return total_loss(loss_fn(model, batch), loss_fn.weight_dict), 0.0

    def validate(self, model: torch.nn.Module, batches: Iterable[Batch], *, loss_fn: LossFn,
                 device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, float]:
        """In-loop validation over this rank's val shard, summed over ranks:
        ``{"val_loss"}`` (and the task's own, e.g. ``val_top1``)."""
        from components.core.device import autocast

        was_training = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64)  # loss*n, correct, n
        with torch.no_grad():
            for batch in batches:
                with autocast(device, amp_dtype):
                    loss, correct = self._val_batch(model, batch, loss_fn)
                n = batch["patches"].shape[0]
                sums[0] += float(loss) * n
                sums[1] += correct
                sums[2] += n
        model.train(was_training)
        sums = all_reduce_sum(sums, device)
        n = max(1.0, float(sums[2]))
        return self._val_metrics(float(sums[0]) / n, float(sums[1]) / n)

    def _val_metrics(self, loss: float, accuracy: float) -> dict[str, float]:
        return {"val_loss": loss}

    @property
    def evaluates(self) -> bool:
        """Whether :meth:`evaluate` measures anything (MAE: the val loss is its report)."""
        return True

    @abstractmethod
    def evaluate(self, model: torch.nn.Module, batches: Iterable[Batch], *, device: torch.device | str,
                 amp_dtype: torch.dtype | None, class_names: list[str], coco_gt: Any = None,
                 score_threshold: float = 0.0, plots_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """THE final evaluation (training's best checkpoint, the promotion gate, the report):
        the evaluator's metrics; with ``plots_dir``, PNG paths under ``"_plots"``."""

    def primary(self, metrics: Mapping[str, Any]) -> float:
        """The primary metric's value in ``metrics``."""
        return float(metrics[self.metric])

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` beats ``b`` in this task's direction."""
        return a > b if self.direction == "max" else a < b

    @abstractmethod
    def postprocess(self, outputs: Any, *, model: torch.nn.Module, orig_hw: torch.Tensor,
                    score_threshold: float, max_detections: int) -> list[dict[str, Any]]:
        """A served batch's raw fp32 outputs → one result dict of numpy arrays per image
        (``orig_hw`` int64 ``[B, 2]``: each image's original (h, w))."""

    @abstractmethod
    def output_specs(self, *, num_classes: int, top_k: int, max_detections: int) -> list[dict[str, Any]]:
        """The Open Inference Protocol (v2) output tensors a served model answers with."""

    def outputs_to_numpy(self, outputs: Any) -> Any:
        """A served model's raw outputs as float32 numpy (``serving_outputs``)."""
        if isinstance(outputs, torch.Tensor):
            return outputs.float().numpy()
        return {k: outputs[k].float().numpy() for k in self.serving_outputs}
