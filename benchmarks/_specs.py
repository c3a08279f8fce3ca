"""Model specs on the benchmarks' command lines: ``name[/patch][+stem]`` in either order."""

from __future__ import annotations

import re


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """``"yolos_demo/8+conv"`` (or ``"yolos_demo+conv/8"``) → (``"yolos_demo"``,
    ``{"patch_size": 8, "stem": "conv"}``): a registered model and its build overrides;
    without a suffix the model's own patch size and stem."""
    name, *suffixes = re.split(r"(?=[/+])", spec)
    overrides: dict = {}
    for suffix in suffixes:
        if suffix.startswith("/"):
            overrides["patch_size"] = int(suffix[1:])
        else:
            overrides["stem"] = suffix[1:]
    return name, overrides
