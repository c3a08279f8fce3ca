"""What ``vitpipe export`` exports: a registry version or a checkpoint directory.

Loading goes through the one loader of each (``components.tracking.registry`` /
``components.tracking.packaging``): nothing is read here that they do not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from components.core.checkpoint import CheckpointError, CheckpointMeta


@dataclass
class ExportSource:
    """The model to export (fp32, eval mode, CPU) and where it came from.

    ``name``/``version``/``run_id`` are set for registry URIs (``run_id``: the MLflow run
    the version was logged in, where the export's artifacts go), ``None`` for directories.
    """

    model: nn.Module
    meta: CheckpointMeta
    uri: str
    name: str | None = None
    version: str | None = None
    run_id: str | None = None

    @property
    def label(self) -> str:
        """A short name for files and folders: ``NAME-vVERSION`` or the directory's name."""
        if self.name is not None:
            return f"{self.name}-v{self.version}"
        return Path(self.uri).resolve().name or "checkpoint"


def open_source(uri: str, *, cache_dir: str | Path, tracking_uri: str | None = None) -> ExportSource:
    """``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a checkpoint directory → the model.

    Raises ``RegistryError`` (unknown model, version or alias; no server) or
    ``CheckpointError`` (not a checkpoint, weights that do not fit) with one sentence.
    """
    if uri.startswith("models:"):
        from components.tracking.registry import get_version, load_registered

        model, meta, resolved = load_registered(uri, cache_dir=Path(cache_dir).expanduser(),
                                                tracking_uri=tracking_uri)
        version = get_version(resolved.name, resolved.version, tracking_uri=tracking_uri)
        return ExportSource(model.float().eval(), meta, uri, resolved.name, str(resolved.version),
                            version.run_id or None)
    from components.tracking.packaging import model_from_checkpoint

    path = Path(uri).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"{uri!r} is neither a registry URI (models:/NAME@ALIAS, models:/NAME/VERSION) "
            "nor a checkpoint directory")
    model, meta = model_from_checkpoint(path)
    return ExportSource(model.float().eval(), meta, str(path))
