"""Typed configs: pydantic models that reject unknown keys and wrong types up front.

Every pipeline config subclasses :class:`StrictModel`; :func:`load_config` reads a YAML
file, applies ``key.sub=value`` overrides from the command line, and validates the result
before any Ray worker starts. A mistake is one clear :class:`ConfigError`, not a traceback
from inside a worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound="StrictModel")


class ConfigError(ValueError):
    """A config file or override is malformed, unknown or of the wrong type."""


class StrictModel(BaseModel):
    """Base of every config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` → ``(["train", "lr"], 0.0003)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {text!r} names no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {err}") from err
    return parts, value


def set_dotted(raw: dict[str, Any], parts: list[str], value: Any, *, what: str) -> None:
    """Set ``raw[parts[0]][parts[1]]...`` to ``value`` (in place), creating sections on the
    way; ``what`` names the setting in the error when a part is not a section."""
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted override in the nested dict ``raw`` (in place) and return it."""
    for text in overrides:
        parts, value = parse_override(text)
        set_dotted(raw, parts, value, what=f"override {text!r}")
    return raw


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] = ()) -> C:
    """Read ``path`` (YAML, optional), apply ``overrides`` and validate as ``cls``."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
    apply_overrides(raw, list(overrides))
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        lines = [f"invalid {cls.__name__}" + (f" in {path}" if path else "") + ":"]
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {where}: {e['msg']}")
        raise ConfigError("\n".join(lines)) from None


def dump_config(config: StrictModel) -> str:
    """The fully resolved config as YAML (logged with the run, stored with checkpoints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def flatten(config: StrictModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config → ``{"train.lr": 3e-4, ...}`` (for MLflow params)."""
    raw = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat
