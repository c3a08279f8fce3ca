"""``run_predict``: offline batch inference with Ray Data, from config to files on disk.

1. resolve the model once (a ``models:/`` alias becomes one fixed version);
2. list the input (a folder / prefix, or a labelled split through the data layer);
3. stream it through Ray Data: decode tasks → an actor pool of model replicas
   (:mod:`components.predict.stages`);
4. on the driver, write each answered batch to ``predictions.parquet`` as it arrives,
   collect bad images for ``skipped.json`` and, per task, COCO results and metrics against
   ground truth (:mod:`components.predict.results`).

Bad images never stop the run: each is skipped, counted and listed with its reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from components.data.config import with_boxes
from components.data.fs import join_uri, resolve
from components.predict.config import PredictConfig
from components.predict.model_ref import resolve_model
from components.predict.sources import Source, folder_source, split_source
from components.predict.stages import DecodeSpec, Predictor, PredictorSpec, decode_rows

log = logging.getLogger(__name__)

PARQUET_FILE = "predictions.parquet"
SKIPPED_FILE = "skipped.json"
METRICS_FILE = "metrics.json"
TRANSIENT_COLUMNS = ("error", "logits")  # used on the driver, not written


@dataclass
class PredictSummary:
    """What a run did: counts, speed, where the files are, metrics (scalars) if scored."""

    model: str
    images: int
    skipped: int
    seconds: float
    images_per_s: float
    outputs: dict[str, str]
    first_batch_s: float = 0.0  # until the first answered batch: actor start, model load
    steady_images_per_s: float | None = None  # after the first answered batch (None: one batch)
    metrics: dict[str, float] | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """The one summary line a run prints (JSON)."""
        return json.dumps(self.__dict__, sort_keys=True)


class OutputDir:
    """The output directory on any filesystem the data layer reads (local, s3://, gs://)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.path = resolve(uri)
        self.fs.create_dir(self.path, recursive=True)

    def where(self, name: str) -> str:
        return join_uri(self.uri, name)

    def write(self, name: str, data: bytes) -> str:
        with self.fs.open_output_stream(f"{self.path.rstrip('/')}/{name}") as f:
            f.write(data)
        return self.where(name)

    def parquet_writer(self, name: str, schema: pa.Schema):
        import pyarrow.parquet as pq

        return pq.ParquetWriter(f"{self.path.rstrip('/')}/{name}", schema, filesystem=self.fs)


def decode_in_actors(cfg: PredictConfig, num_gpus: float) -> bool:
    """Does Ray Data fuse the decode step into the model actors?

    It does when both stages reserve the same resources (equal ``num_cpus``, no GPU): each
    actor then decodes its own batches and nothing crosses the object store. Otherwise the
    decode tasks run apart and need CPUs of their own beside the pool's.
    """
    return num_gpus == 0 and cfg.decode.num_cpus == cfg.inference.num_cpus


def cpus_needed(cfg: PredictConfig, num_gpus: float = 0.0) -> float:
    """Logical CPUs the pipeline needs to make progress: the pool, plus one decode task
    when decoding runs apart (a pool that takes every CPU would starve it forever)."""
    pool = cfg.inference.actors * cfg.inference.num_cpus
    return pool if decode_in_actors(cfg, num_gpus) else pool + cfg.decode.num_cpus


def ensure_ray(cfg: PredictConfig) -> None:
    """Join ``RAY_ADDRESS``'s cluster, or start a local one with at least
    :func:`cpus_needed` logical CPUs (more than the cores is fine: they are shared)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        ray.init(address=address, configure_logging=False)
        return
    ray.init(num_cpus=int(max(os.cpu_count() or 1, math.ceil(cpus_needed(cfg)))),
             configure_logging=False, _node_ip_address="127.0.0.1", include_dashboard=False)


def check_fits(cfg: PredictConfig, num_gpus: float) -> None:
    """A pipeline that cannot start on this cluster is a ``ConfigError``, not a hang."""
    import ray

    from components.core.config import ConfigError

    have = ray.cluster_resources()
    need = cpus_needed(cfg, num_gpus)
    if need > have.get("CPU", 0):
        raise ConfigError(
            f"the pipeline needs {need:g} CPUs ({cfg.inference.actors} actors x "
            f"{cfg.inference.num_cpus:g}"
            + ("" if decode_in_actors(cfg, num_gpus) else f" + a decode task of {cfg.decode.num_cpus:g}")
            + f") but the cluster has {have.get('CPU', 0):g}: lower inference.actors or "
            "inference.num_cpus (or decode.num_cpus)")
    if num_gpus and cfg.inference.actors * num_gpus > have.get("GPU", 0):
        raise ConfigError(f"{cfg.inference.actors} actors x {num_gpus:g} GPUs do not fit the "
                          f"cluster's {have.get('GPU', 0):g} GPUs")


def read_source(cfg: PredictConfig, meta) -> Source:
    if cfg.input.path is not None:
        return folder_source(cfg.input.path)
    return split_source(cfg.input.data, cfg.input.split, meta)


def build_pipeline(source: Source, decode: DecodeSpec, predictor: PredictorSpec,
                   cfg: PredictConfig, num_gpus: float):
    """The lazy Ray Dataset: records → decode tasks → the model actor pool (Arrow tables)."""
    import ray.data

    rows = cfg.decode.rows_per_block
    ds = ray.data.from_items(source.records,
                             override_num_blocks=max(1, math.ceil(len(source.records) / rows)))
    ds = ds.map_batches(decode_rows, batch_size=rows, fn_kwargs={"spec": decode},
                        num_cpus=cfg.decode.num_cpus,
                        compute=ray.data.TaskPoolStrategy(size=cfg.decode.tasks))
    return ds.map_batches(Predictor, fn_constructor_kwargs={"spec": predictor},
                          batch_size=cfg.inference.batch_size, batch_format="numpy",
                          num_cpus=cfg.inference.num_cpus, num_gpus=num_gpus,
                          compute=ray.data.ActorPoolStrategy(size=cfg.inference.actors))


def gpus_per_actor(cfg: PredictConfig) -> float:
    import ray

    if cfg.inference.num_gpus is not None:
        return cfg.inference.num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def stream_to_parquet(dataset, source: Source, results, out: OutputDir
                      ) -> tuple[int, float, tuple[float, int]]:
    """Write each answered batch as it arrives; bad rows go to the source's skip report.

    Returns ``(images predicted, seconds, (seconds, images) at the first answered batch)``.
    """
    report = source.report
    writer, predicted, first = None, 0, None
    start = time.perf_counter()
    try:
        for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            bad = table.filter(pc.not_equal(table.column("error"), ""))
            for row in bad.select(["file", "error"]).to_pylist():
                report.skip_file(row["file"], row["error"])
            good = table.filter(pc.equal(table.column("error"), ""))
            if not good.num_rows:
                continue
            results.add(good)
            good = good.drop_columns([c for c in TRANSIENT_COLUMNS if c in good.column_names])
            good = good.set_column(good.schema.get_field_index("file"), "file", pa.array(
                [source.uri_of(f) for f in good.column("file").to_pylist()], pa.string()))
            if writer is None:
                writer = out.parquet_writer(PARQUET_FILE, good.schema)
            writer.write_table(good)
            predicted += good.num_rows
            if first is None:
                first = (time.perf_counter() - start, predicted)
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - start
    return predicted, seconds, first or (seconds, predicted)


def run_predict(cfg: PredictConfig) -> PredictSummary:
    """Predict every image of ``cfg.input`` (see the module docs); returns the summary.

    Raises ``ConfigError``, ``DataError``, ``CheckpointError`` or ``RegistryError`` for a
    request that cannot be served, before any image is read.
    """
    from components.predict.results import RESULTS

    ref, meta = resolve_model(cfg.model, tracking_uri=cfg.tracking_uri, cache_dir=cfg.cache_dir)
    source = read_source(cfg, meta)
    out = OutputDir(cfg.output)
    results = RESULTS[meta.task](source, meta)
    ensure_ray(cfg)
    num_gpus = gpus_per_actor(cfg)
    check_fits(cfg, num_gpus)
    decode = DecodeSpec(images=source.images, image_size=meta.image_size,
                        patch_size=meta.patch_size, max_pixels=cfg.decode.max_pixels,
                        reduced=cfg.decode.reduced,
                        letterbox=with_boxes(meta.task) and bool(meta.extra.get("letterbox")))
    predictor = PredictorSpec(
        model=ref, threads=cfg.inference.torch_threads(), precision=cfg.inference.precision,
        use_gpu=num_gpus > 0, top_k=cfg.top_k, score_threshold=cfg.score_threshold,
        max_detections=cfg.max_detections, keep_logits=results.keep_logits,
        data_fingerprint=source.fingerprint)
    log.info("predicting %d images of %s with %s (%d actors x %d threads, batch %d, %s GPUs each)",
             len(source.records), source.root_uri, ref.uri, cfg.inference.actors,
             predictor.threads, cfg.inference.batch_size, num_gpus)
    dataset = build_pipeline(source, decode, predictor, cfg, num_gpus)

    report = source.report
    predicted, seconds, first = stream_to_parquet(dataset, source, results, out)
    steady = ((predicted - first[1]) / (seconds - first[0])
              if predicted > first[1] and seconds > first[0] else None)

    outputs: dict[str, str] = {}
    if predicted:
        outputs["predictions"] = out.where(PARQUET_FILE)
    metrics, extra = results.finish(out.write)
    outputs.update(extra)
    report.counts["images_predicted"] = predicted
    outputs["skipped"] = out.write(SKIPPED_FILE, json.dumps(report.to_dict(), indent=1).encode())
    if metrics is not None:
        outputs["metrics"] = out.write(METRICS_FILE, json.dumps(metrics, indent=1).encode())
    skipped = sum(1 for s in report.skipped if "file" in s)
    return PredictSummary(
        model=ref.uri, images=predicted, skipped=skipped, seconds=round(seconds, 3),
        images_per_s=round(predicted / seconds, 2) if seconds > 0 else 0.0, outputs=outputs,
        first_batch_s=round(first[0], 3),
        steady_images_per_s=None if steady is None else round(steady, 2),
        metrics=None if metrics is None else {
            k: round(float(v), 6) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)},
        counts={k: int(v) for k, v in sorted(report.counts.items())})
