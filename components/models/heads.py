"""Classification heads: the ViT pre-training MLP head and the fine-tuning linear head.

ViT (Dosovitskiy et al. 2021, §3.1): "The classification head is implemented by a MLP with
one hidden layer at pre-training time and by a single linear layer at fine-tuning time";
the hidden layer uses tanh (the reference code's ``pre_logits``), and the fine-tuning layer
starts at zero.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

HeadKind = Literal["mlp", "linear"]
HEAD_KINDS = ("mlp", "linear")


class LinearHead(nn.Module):
    """``[B, D] → [B, num_classes]``; zero-initialised (the fine-tuning head)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(x)


class MlpHead(nn.Module):
    """``[B, D] → Linear(D, hidden) → tanh → Linear(hidden, num_classes)`` (pre-training head)."""

    def __init__(self, in_features: int, num_classes: int, hidden_features: int | None = None) -> None:
        super().__init__()
        hidden = hidden_features or in_features
        self.hidden = nn.Linear(in_features, hidden)
        self.act = nn.Tanh()
        self.fc = nn.Linear(hidden, num_classes)
        nn.init.trunc_normal_(self.hidden.weight, std=0.02)
        nn.init.zeros_(self.hidden.bias)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(self.act(self.hidden(x)))


def make_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    if kind == "mlp":
        return MlpHead(in_features, num_classes)
    if kind == "linear":
        return LinearHead(in_features, num_classes)
    raise ValueError(f"head must be one of {HEAD_KINDS}, got {kind!r}")


def set_head(model: nn.Module, num_classes: int, kind: str = "linear") -> nn.Module:
    """Replace a classifier's head (e.g. pre-training MLP → fine-tuning linear) in place.

    The new head is freshly initialised; the backbone keeps its weights. The model's
    ``build_config`` is updated so a checkpoint written afterwards rebuilds the new shape.
    Detectors get a new class head for ``num_classes`` (``kind`` is ignored for them).
    """
    if hasattr(model, "reset_classes"):  # a detector: its class head
        model.reset_classes(num_classes)
    else:
        if not hasattr(model, "head") or not hasattr(model, "num_features"):
            raise TypeError(f"{type(model).__name__} has no replaceable head")
        param = next(model.parameters())
        model.head = make_head(kind, model.num_features, num_classes).to(param.device)
        model.head_kind = kind
        model.build_config["head"] = kind
    model.num_classes = num_classes
    model.build_config["num_classes"] = num_classes
    return model
