"""The task names, defined once: what a run trains (``TaskName``) and what a model or a
checkpoint is (``ModelTask``: an MAE run trains a ViT encoder saved as a classifier)."""

from typing import Literal

TaskName = Literal["classification", "detection", "mae"]
ModelTask = Literal["classification", "detection"]
