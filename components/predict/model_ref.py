"""Which checkpoint to predict with: a ``models:/`` URI resolved once to a fixed version, or
a local checkpoint directory.

The driver resolves an alias to one version and downloads it before any actor starts, so
every replica of the pool runs the same weights even if the alias moves mid-run. Each actor
then finds the checkpoint on its own node (:meth:`ModelRef.local_dir`): the driver's copy
where the actor's node sees it (one machine, shared storage: no registry call, MLflow not
even imported), else the registry's per-node cache (downloaded once per version and node),
or the directory as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from components.core.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointError, CheckpointMeta, read_meta


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
    local_copy: str | None = None  # a registry version as the driver downloaded it

    def local_dir(self) -> Path:
        """The checkpoint directory on this node (downloads a registry version once)."""
        if self.directory is not None:
            return Path(self.directory)
        if self.local_copy is not None and _complete(Path(self.local_copy)):
            return Path(self.local_copy)
        from components.tracking.registry import fetch_checkpoint

        return fetch_checkpoint(self.name, self.version, cache_dir=Path(self.cache_dir).expanduser(),
                                tracking_uri=self.tracking_uri)


def _complete(directory: Path) -> bool:
    """Does ``directory`` hold a whole checkpoint (weights and ``vitpipe.json``)?"""
    return (directory / WEIGHTS_FILE).is_file() and (directory / META_FILE).is_file()


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
        local = ref.local_dir()
        return replace(ref, local_copy=str(local)), read_meta(local)
    directory = Path(model).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"model {model!r} is neither a models:/ URI nor a checkpoint directory")
    directory = directory.resolve()
    return ModelRef(uri=str(directory), directory=str(directory)), read_meta(directory)
