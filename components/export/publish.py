"""An export's files on its model version's MLflow run, and back (for serving).

Layout on the run that logged the version::

    exports/<format>/v<VERSION>/<file>        model.onnx | model.pt2
    exports/<format>/v<VERSION>/parity.json   the parity report

and the version's tag ``export.<format>`` = that folder's artifact path (how serving finds
the export of the version an alias names). A later export of the same version and format
replaces the tag and overwrites the files.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

FILES = {"onnx": "model.onnx", "torch-export": "model.pt2"}
REPORT_FILE = "parity.json"


def tag_key(fmt: str) -> str:
    return f"export.{fmt}"


def artifact_dir(fmt: str, version: str) -> str:
    return f"exports/{fmt}/v{version}"


def log_export(*, name: str, version: str, run_id: str, fmt: str, files: list[Path],
               tracking_uri: str | None = None) -> str:
    """Upload ``files`` to the version's run and tag the version; returns the artifact path."""
    from components.tracking.registry import RegistryError, client, server_error

    from mlflow.exceptions import MlflowException

    mlf = client(tracking_uri)
    where = artifact_dir(fmt, version)
    try:
        for path in files:
            mlf.log_artifact(run_id, str(path), artifact_path=where)
        mlf.set_model_version_tag(name, version, tag_key(fmt), where)
    except MlflowException as err:
        raise server_error(err, f"storing the export of {name} version {version}") from None
    except OSError as err:
        raise RegistryError(f"cannot upload the export of {name} version {version}: {err}") from None
    log.info("logged %s to run %s as %s", [p.name for p in files], run_id, where)
    return where


def fetch_export(name: str, version: str, fmt: str, *, cache_dir: str | Path,
                 tracking_uri: str | None = None) -> Path:
    """The exported file of ``name`` version ``version`` on local disk (downloaded once).

    Cached as ``cache_dir/NAME/VERSION/exports/<format>/<file>``; a download lands in a
    temporary folder first and is renamed into place. A version without an export of this
    format is a ``RegistryError`` naming the command that makes one.
    """
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from components.tracking.registry import RegistryError, get_version

    target = Path(cache_dir).expanduser() / name / str(version) / "exports" / fmt / FILES[fmt]
    if target.is_file():
        return target
    mv = get_version(name, version, tracking_uri=tracking_uri)
    where = (mv.tags or {}).get(tag_key(fmt))
    if not where or not mv.run_id:
        raise RegistryError(
            f"{name} version {version} has no {fmt} export: run "
            f"'vitpipe export models:/{name}/{version} --format {fmt}' first")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        try:
            got = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id, artifact_path=f"{where}/{FILES[fmt]}", dst_path=str(staging),
                tracking_uri=tracking_uri)
        except (MlflowException, OSError) as err:
            raise RegistryError(
                f"{name} version {version}: cannot download its {fmt} export "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
        if not target.is_file():
            Path(got).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
