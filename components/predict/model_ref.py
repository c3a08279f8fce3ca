"""Which checkpoint to predict with: a ``models:/`` URI resolved once to a fixed version, or
a local checkpoint directory.

The driver resolves an alias to one version before any actor starts, so every replica of
the pool runs the same weights even if the alias moves mid-run. Each actor then finds the
checkpoint on its own node (:meth:`ModelRef.local_dir`): the registry's per-node cache
(downloaded once per version and node) or the directory as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from components.core.checkpoint import CheckpointError, CheckpointMeta, read_meta


@dataclass(frozen=True)
class ModelRef:
    """A fixed model: ``uri`` names it in outputs (``models:/NAME/VERSION`` or the directory)."""

    uri: str
    directory: str | None = None  # a checkpoint directory given directly
    name: str | None = None  # registered model name
    version: str | None = None
    alias: str | None = None
    tracking_uri: str | None = None
    cache_dir: str = "~/.cache/vitpipe/models"

    def local_dir(self) -> Path:
        """The checkpoint directory on this node (downloads a registry version once)."""
        if self.directory is not None:
            return Path(self.directory)
        from components.tracking.registry import fetch_checkpoint

        return fetch_checkpoint(self.name, self.version, cache_dir=Path(self.cache_dir).expanduser(),
                                tracking_uri=self.tracking_uri)


def resolve_model(model: str, *, tracking_uri: str | None, cache_dir: str
                  ) -> tuple[ModelRef, CheckpointMeta]:
    """``models:/NAME@ALIAS`` | ``models:/NAME/VERSION`` | a directory → (fixed ref, its meta).

    Raises ``RegistryError`` (unknown name, version or alias; no server) or
    ``CheckpointError`` (not a checkpoint directory).
    """
    if model.startswith("models:/"):
        from components.tracking.registry import resolve_uri

        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        resolved = resolve_uri(model, tracking_uri=uri)
        ref = ModelRef(uri=resolved.uri, name=resolved.name, version=resolved.version,
                       alias=resolved.alias, tracking_uri=uri, cache_dir=cache_dir)
        return ref, read_meta(ref.local_dir())
    directory = Path(model).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"model {model!r} is neither a models:/ URI nor a checkpoint directory")
    directory = directory.resolve()
    return ModelRef(uri=str(directory), directory=str(directory)), read_meta(directory)
