"""The model deployment: one task's model, dynamic batching, alias polling and swapping.

One class serves either task (``task`` is its constructor argument); the application binds
it twice, as the ``classifier`` and ``detector`` deployments, each with its own replicas,
autoscaling and ``user_config`` (:class:`~components.serving.settings.ModelServerSettings`).

Model updates: at replica start ``reconfigure`` loads the version the URI names (the alias
resolved to a fixed version). A daemon thread then re-resolves the alias every
``poll_interval_s``; when it names another version the thread loads and warms the new one
*beside* the old, then swaps one reference. Each batch reads that reference once, so a batch
runs whole on one version and no request is dropped or paused by an update.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, get_args

import numpy as np
from ray import serve

from components.core.names import ModelTask
from components.serving.faults import hang_if_asked
from components.serving.runtime import InferItem, LoadedModel, load_version
from components.serving.settings import ModelServerSettings

log = logging.getLogger("ray.serve")


class ModelServer:
    """Serve one task's registered model. Called by the ingress through a handle."""

    def __init__(self, task: str, tracking_uri: str | None = None) -> None:
        if task not in get_args(ModelTask):
            raise ValueError(f"task must be classification|detection, got {task!r}")
        self._task = task
        self._tracking_uri = tracking_uri
        self._settings: ModelServerSettings | None = None
        self._loaded: LoadedModel | None = None
        self._batch_started: float | None = None
        self._forwards: dict[int, float] = {}  # worker thread → when its forward pass began
        self._last_poll_error: str | None = None
        self._swaps = 0
        self._batches = 0  # dynamic batches run, and the requests they held
        self._batched_requests = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._model_free = asyncio.Event()  # set while no batch runs (see ``infer``)
        self._model_free.set()
        self._pending = 0  # infer() calls in this replica not yet answered
        self._poller: threading.Thread | None = None

    # --- configuration -------------------------------------------------------------------
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply live settings; the first call (replica start) loads the model."""
        settings = ModelServerSettings.model_validate(user_config or {})
        previous, self._settings = self._settings, settings
        self._run_batch.set_max_batch_size(settings.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        if self._loaded is None:
            self._loaded = self._load(settings)
        elif previous is not None and (
            previous.model_uri != settings.model_uri or previous.precision != settings.precision
            or previous.runtime != settings.runtime
        ):
            self._wake.set()  # the poller loads the new URI in the background
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="alias-poller", daemon=True)
            self._poller.start()
        else:
            self._wake.set()  # a changed interval takes effect now

    def _load(self, settings: ModelServerSettings) -> LoadedModel:
        return load_version(
            settings.model_uri, task=self._task, cache_dir=settings.cache_dir,
            precision=settings.precision, tracking_uri=self._tracking_uri,
            warmup_batch_sizes=tuple(sorted({1, settings.max_batch_size})),
            runtime=settings.runtime,
        )

    # --- model updates -------------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            settings = self._settings
            interval = settings.poll_interval_s if settings else 0.0
            self._wake.wait(timeout=interval if interval > 0 else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check_for_update()
            except Exception as err:  # registry down: keep serving the loaded version
                self._last_poll_error = f"{type(err).__name__}: {err}"
                log.warning("model update check failed, still serving %s: %s",
                            self._loaded.version if self._loaded else None, err)

    def check_for_update(self) -> bool:
        """Resolve the URI now; load and swap in the version it names if that is new."""
        from components.tracking.registry import resolve_uri

        settings, current = self._settings, self._loaded
        resolved = resolve_uri(settings.model_uri, tracking_uri=self._tracking_uri)
        same_uri = current is not None and current.uri == settings.model_uri
        if same_uri and str(resolved.version) == current.version and (
            current.runtime == settings.runtime
            and current.autocast == _dtype_for(current, settings.precision, settings.runtime)
        ):
            self._last_poll_error = None
            return False
        fresh = self._load(settings)
        self._loaded = fresh  # the swap: one reference, read once per batch
        self._swaps += 1
        self._last_poll_error = None
        log.info("now serving %s version %s (was %s)", fresh.name, fresh.version,
                 current.version if current else None)
        return True

    # --- requests ------------------------------------------------------------------------
    async def infer(self, patches: np.ndarray, image_size: int, patch_size: int,
                    orig_hw: tuple[int, int]) -> dict[str, Any]:
        """One image's patches → its result (joined into a dynamic batch with others).

        Alone on an idle replica a request runs at once: waiting ``batch_wait_timeout_s``
        for company that is not coming is pure latency. Otherwise it waits while a batch
        runs: Ray Serve's batcher forms the next batch while the current one runs (forming
        is not gated by ``max_concurrent_batches``), so under load it cut many 1-2 item
        batches that then queued for the model (mean batch 1.3 at 32 concurrent callers of
        a 28 ms model); waiting for the model lets them enter the queue together, as one
        full batch."""
        item = InferItem(patches, image_size, patch_size, tuple(orig_hw))
        self._pending += 1
        try:
            if self._pending == 1 and self._model_free.is_set():
                return (await self._execute([item]))[0]
            await self._model_free.wait()
            return await self._run_batch(item)
        finally:
            self._pending -= 1

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.004)
    async def _run_batch(self, items: list[InferItem]) -> list[dict[str, Any]]:
        return await self._execute(items)

    async def _execute(self, items: list[InferItem]) -> list[dict[str, Any]]:
        """Run ``items`` as one forward pass (on a thread: the event loop keeps taking requests)."""
        loaded, settings = self._loaded, self._settings
        self._model_free.clear()
        self._batch_started = time.monotonic()
        self._batches += 1
        self._batched_requests += len(items)
        try:
            return await asyncio.to_thread(self._forward, loaded, settings, items)
        finally:
            self._batch_started = None
            self._model_free.set()

    def _forward(self, loaded: LoadedModel, settings: ModelServerSettings,
                 items: list[InferItem]) -> list[dict[str, Any]]:
        """The forward pass, on a worker thread. It stays listed in ``_forwards`` until it
        returns, even after its requests were cancelled: ``check_health`` sees a stuck one."""
        thread = threading.get_ident()
        self._forwards[thread] = time.monotonic()
        try:
            hang_if_asked()  # chaos tests only (see components.serving.faults)
            return loaded.run(items, top_k=settings.top_k,
                              score_threshold=settings.score_threshold,
                              max_detections=settings.max_detections)
        finally:
            self._forwards.pop(thread, None)

    async def explain(self, patches: np.ndarray, image_size: int, patch_size: int,
                      orig_hw: tuple[int, int]) -> dict[str, Any]:
        """Result plus an attention-map PNG (not batched: needs the explicit attention path).

        A model without ViT attention answers ``{"error": ...}`` (the ingress makes it a 400).
        """
        from components.serving.explain import AttentionUnavailable, attention_png

        loaded = self._loaded
        item = InferItem(patches, image_size, patch_size, tuple(orig_hw))
        result = await self._run_batch(item)
        try:
            png = await asyncio.to_thread(attention_png, loaded, loaded.to_model_input(item))
        except AttentionUnavailable as err:
            return {"error": str(err)}
        return {**result, "attention_png": png}

    def describe(self) -> dict[str, Any]:
        """The served version and settings (``/v1/models``, ``/v2/models/{name}``)."""
        loaded, settings = self._loaded, self._settings
        return {
            **loaded.describe(), "swaps": self._swaps, "last_poll_error": self._last_poll_error,
            "settings": settings.model_dump(),
            "batches": {"count": self._batches, "requests": self._batched_requests,
                        "mean_size": round(self._batched_requests / max(self._batches, 1), 2)},
        }

    async def health(self) -> dict[str, Any]:
        """A real tiny inference through the batch queue (a stalled replica fails it)."""
        loaded = self._loaded
        side = loaded.meta.image_size
        patch = loaded.meta.patch_size
        zeros = np.zeros(((side // patch) ** 2, patch * patch * 3), np.uint8)
        start = time.perf_counter()
        result = await self.infer(zeros, side, patch, (side, side))
        return {"status": "ok", "version": result["version"],
                "latency_ms": round((time.perf_counter() - start) * 1e3, 2)}

    def check_health(self) -> None:
        """Serve's periodic probe: a batch stuck past ``stall_timeout_s`` restarts the replica."""
        settings = self._settings
        started = min([*self._forwards.values(), self._batch_started or time.monotonic()])
        if settings and time.monotonic() - started > settings.stall_timeout_s:
            raise RuntimeError(f"a batch has run for more than {settings.stall_timeout_s}s")
        if self._poller is not None and not self._poller.is_alive() and not self._stop.is_set():
            raise RuntimeError("the model update thread died")

    def __del__(self) -> None:
        self._stop.set()
        self._wake.set()


def _dtype_for(loaded: LoadedModel, precision: str, runtime: str):
    from components.serving.runtime import serving_autocast

    return serving_autocast(loaded.device, precision, runtime, loaded.model)
