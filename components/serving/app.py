"""The Serve application: a FastAPI ingress in front of one model deployment per task.

```
HTTP ─► ingress (FastAPI: auth, limits, decode + eval transform in a thread pool)
          ├─► classifier (ModelServer: @serve.batch, alias poller)  models:/vitpipe-classifier@champion
          └─► detector   (ModelServer: @serve.batch, alias poller)  models:/vitpipe-detector@champion
```

With ``colocate=True`` the ingress runs the ``ModelServer`` objects itself: one deployment,
and a request makes one Ray hop (proxy → replica) instead of two, which at low load is most
of the latency added to the model's own time. The split layout scales decoding and model
replicas apart (model replicas on GPUs, decoding on CPUs); colocated suits CPU serving and
latency-bound traffic.

Images are decoded and patchified in the ingress *before* batching, so a bad image fails
only its own request and the model replicas only ever see valid ``[N, P*P*3]`` tensors.

Endpoints: ``POST /v1/classify``, ``POST /v1/detect`` (raw image body or multipart form;
``?attention=1``, ``?top_k=``), ``GET /healthz``, ``GET /v1/models``, and the Open
Inference Protocol v2 REST API under ``/v2`` (see :mod:`components.serving.v2`).

``app`` (defaults) is what ``serve build components.serving.app:app`` turns into
``pipelines/configs/serve.yaml``; ``build_app(args)`` builds it with other URIs/resources.
"""

import asyncio
import base64
import hmac
import inspect
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import Field, field_validator
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from components.core.config import StrictModel
from components.serving import v2
from components.serving.decode import (
    MULTIPART, check_content_type, decode_image_bytes, image_bytes_from_form, read_body,
)
from components.serving.errors import (
    RequestError, bad_request, describe_failure, is_replica_loss, not_found, unauthorized,
    unavailable,
)
from components.serving.model_server import ModelServer
from components.serving.settings import (
    DEFAULT_CLASSIFIER_URI, DEFAULT_DETECTOR_URI, TOKEN_ENV, ColocatedSettings,
    IngressSettings, ModelServerSettings,
)

log = logging.getLogger("ray.serve")

TASKS = {"classification": "classifier", "detection": "detector"}  # task → deployment name
SHORT_NAMES = {"classifier": "classification", "detector": "detection",
               "classification": "classification", "detection": "detection"}

api = FastAPI(
    title="vitpipe serving",
    description="Classify and detect with the registry's @champion models.",
    version="1",
)


@api.exception_handler(RequestError)
async def _request_error(_: Request, err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return JSONResponse({"error": f"{where}: {first.get('msg')}", "code": "bad_request"},
                        status_code=400)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(err.detail), "code": "http_error"},
                        status_code=err.status_code, headers=getattr(err, "headers", None))


# Helpers sit above the deployment: Serve serialises the class when it is decorated.
async def _await(response):
    return await response


async def _gather_or_cancel(calls):
    """``asyncio.gather`` that cancels the other calls when one fails (no orphaned model work)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _model_ref(result: dict[str, Any]) -> dict[str, Any]:
    return {"name": result["name"], "version": result["version"]}


def _metadata(info: dict[str, Any]) -> dict[str, Any]:
    settings = info["settings"]
    return v2.model_metadata(
        name=info["name"], version=info["version"], task=info["task"],
        class_names=info["class_names"], image_size=info["image_size"],
        patch_size=info["patch_size"], top_k=settings["top_k"],
        max_detections=settings["max_detections"],
    )


def _preprocess(image: np.ndarray, image_size: int, patch_size: int, letterbox: bool
                ) -> np.ndarray:
    """The model's eval transform: whole-image resize, or letterbox (aspect kept, padded;
    the replica derives the valid region from the original size)."""
    if letterbox:
        from components.data.transforms import letterbox_preprocess

        return letterbox_preprocess(image, image_size=image_size, patch_size=patch_size)[0]
    from components.data.image_io import preprocess

    return preprocess(image, image_size=image_size, patch_size=patch_size)[0]


def _decode_and_preprocess(data: bytes, max_pixels: int, image_size: int, patch_size: int,
                           letterbox: bool = False):
    """Thread-pool work for one request: bytes → (patches uint8 [N, P*P*3], (h, w))."""
    image = decode_image_bytes(data, max_pixels=max_pixels)
    return _preprocess(image, image_size, patch_size, letterbox), image.shape[:2]


def _preprocess_batch(images: np.ndarray, image_size: int, patch_size: int,
                      letterbox: bool = False):
    return [(_preprocess(np.ascontiguousarray(image), image_size, patch_size, letterbox),
             image.shape[:2]) for image in images]


@serve.deployment(
    name="ingress",
    max_ongoing_requests=256,
    autoscaling_config={
        "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 64,
        "upscale_delay_s": 10, "downscale_delay_s": 120,
    },
    ray_actor_options={"num_cpus": 0.5},
    user_config=IngressSettings().model_dump(),
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress(api)
class Ingress:
    """HTTP front: auth, limits, decoding, routing to the model deployments."""

    def __init__(self, classifier=None, detector=None, *, local_tasks: tuple[str, ...] = (),
                 tracking_uri: str | None = None) -> None:
        """``classifier``/``detector``: model deployment handles; ``local_tasks``: tasks whose
        ModelServer runs in this replica instead (colocated; configured by ``user_config``)."""
        self._handles: dict[str, Any] = {"classification": classifier, "detection": detector}
        self._handles = {task: h for task, h in self._handles.items() if h is not None}
        for task in local_tasks:
            self._handles[task] = ModelServer(task, tracking_uri)
        self._token = os.environ.get(TOKEN_ENV) or None
        self._settings = IngressSettings()
        self._pool = ThreadPoolExecutor(self._settings.decode_threads, "decode")
        self._info: dict[str, dict[str, Any]] = {}  # task → last describe() / result geometry

    def _local(self) -> dict[str, ModelServer]:
        return {t: h for t, h in self._handles.items() if isinstance(h, ModelServer)}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        local = self._local()
        kind = ColocatedSettings if local else IngressSettings
        settings = kind.model_validate(user_config or {})
        if settings.require_token and not self._token:
            raise ValueError(f"require_token is set but ${TOKEN_ENV} is empty")
        if local and set(settings.models) != set(local):
            raise ValueError(f"user_config.models must configure exactly {sorted(local)}, "
                             f"got {sorted(settings.models)}")
        for task, server in local.items():
            server.reconfigure(settings.models[task].model_dump())
        if settings.decode_threads != self._settings.decode_threads:
            old, self._pool = self._pool, ThreadPoolExecutor(settings.decode_threads, "decode")
            old.shutdown(wait=False)
        self._settings = settings

    def check_health(self) -> None:
        """Serve's periodic probe: a colocated model with a stalled batch fails it."""
        for server in self._local().values():
            server.check_health()

    # --- helpers -------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credentials.strip().encode(), self._token.encode()
        ):
            raise unauthorized()

    def _handle(self, task: str):
        handle = self._handles.get(task)
        if handle is None:
            raise not_found(f"no {task} model is served by this application")
        return handle

    async def _call(self, task: str, method: str, *args, timeout_s: float | None = None):
        """``method(*args)`` on ``task``'s model within the request's timeout.

        A call whose model replica died, vanished or refused it is sent once more (the
        router has dropped that replica; inference is idempotent), within what is left of
        the timeout. Whatever still fails is a 503 with ``Retry-After``, logged as one line.
        """
        target = self._handle(task)
        timeout = timeout_s or self._settings.request_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempts = 1 if isinstance(target, ModelServer) else 2  # colocated: no other replica
        for attempt in range(1, attempts + 1):
            try:
                return await self._attempt(target, method, args, deadline - loop.time())
            except asyncio.TimeoutError:
                reason = f"did not answer within {timeout:g}s"
            except (RequestError, asyncio.CancelledError):
                raise
            except Exception as err:  # a backend failure: a 503, never a 500
                lost = is_replica_loss(err)
                if lost and attempt < attempts and deadline > loop.time():
                    log.warning("%s.%s: replica lost (%s); retrying on another replica",
                                TASKS[task], method, describe_failure(err))
                    continue
                reason = f"{'replica lost' if lost else 'failed'} ({describe_failure(err)})"
            log.warning("%s.%s answered 503: %s", TASKS[task], method, reason)
            raise unavailable(f"the {task} model is unavailable: {reason}",
                              self._settings.retry_after_s)

    @staticmethod
    async def _attempt(target, method: str, args: tuple, timeout: float):
        """One model call; cancelled with the request (client gone) or at ``timeout``."""
        if isinstance(target, ModelServer):  # colocated: a plain call (cancelled with us)
            pending = getattr(target, method)(*args)
            if not inspect.isawaitable(pending):
                return pending
            return await asyncio.wait_for(pending, max(timeout, 0.0))
        response = getattr(target, method).remote(*args)
        try:
            return await asyncio.wait_for(_await(response), max(timeout, 0.0))
        except (asyncio.TimeoutError, asyncio.CancelledError):  # drop its queued model call
            response.cancel()
            raise

    async def _geometry(self, task: str) -> dict[str, Any]:
        info = self._info.get(task)
        if info is None:
            info = await self._call(task, "describe")
            self._info[task] = info
        return info

    def _remember(self, task: str, result: dict[str, Any]) -> None:
        info = self._info.setdefault(task, {})
        for key in ("version", "name", "image_size", "patch_size", "class_names"):
            info[key] = result[key]

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _image_from_request(self, request: Request) -> bytes:
        kind = check_content_type(request.headers.get("content-type"))
        body = await read_body(request.headers, request.stream(),
                               max_bytes=self._settings.max_body_bytes)
        if kind == MULTIPART:
            return await image_bytes_from_form(request.headers, body)
        return body

    async def _predict_image(self, task: str, data: bytes, attention: bool) -> tuple[dict, tuple]:
        geometry = await self._geometry(task)
        image_size, patch_size = geometry["image_size"], geometry["patch_size"]
        patches, orig_hw = await self._run(
            _decode_and_preprocess, data, self._settings.max_pixels, image_size, patch_size,
            bool(geometry.get("letterbox")),
        )
        method = "explain" if attention else "infer"
        result = await self._call(task, method, patches, image_size, patch_size, orig_hw)
        if "error" in result:
            raise bad_request(result["error"], code="attention_unavailable")
        self._remember(task, result)
        return result, orig_hw

    # --- /v1 -----------------------------------------------------------------------------
    @api.post("/v1/classify")
    async def classify(self, request: Request, top_k: int | None = None,
                       attention: bool = False) -> JSONResponse:
        self._authorize(request)
        if top_k is not None and top_k < 1:
            raise bad_request("top_k must be at least 1")
        data = await self._image_from_request(request)
        result, orig_hw = await self._predict_image("classification", data, attention)
        probabilities = np.asarray(result["probabilities"])
        default_k = self._info.get("classification", {}).get("settings", {}).get("top_k", 5)
        k = min(top_k or default_k, probabilities.shape[0])
        order = np.argsort(-probabilities, kind="stable")[:k]
        names = result["class_names"]
        body = {
            "model": _model_ref(result),
            "image": {"height": orig_hw[0], "width": orig_hw[1]},
            "predictions": [
                {"label": names[i], "class_id": int(i), "score": float(probabilities[i])}
                for i in order
            ],
        }
        if attention:
            body["attention_png"] = result["attention_png"]
        return JSONResponse(body)

    @api.post("/v1/detect")
    async def detect(self, request: Request, attention: bool = False,
                     score_threshold: float | None = None) -> JSONResponse:
        self._authorize(request)
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:  # NaN too
            raise bad_request("score_threshold must be within [0, 1]")
        data = await self._image_from_request(request)
        result, orig_hw = await self._predict_image("detection", data, attention)
        names = result["class_names"]
        threshold = score_threshold if score_threshold is not None else 0.0
        body = {
            "model": _model_ref(result),
            "image": {"height": orig_hw[0], "width": orig_hw[1]},
            "box_format": "xyxy pixels of the original image",
            "detections": [
                {"box": [round(float(v), 2) for v in box], "label": names[int(label)],
                 "class_id": int(label), "score": float(score)}
                for box, score, label in zip(result["boxes"], result["scores"], result["labels"])
                if score >= threshold
            ],
        }
        if attention:
            body["attention_png"] = result["attention_png"]
        return JSONResponse(body)

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        self._authorize(request)
        found = {}
        for task in self._handles:
            info = await self._call(task, "describe")
            self._info[task] = info
            found[TASKS[task]] = info
        return JSONResponse({"models": found})

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """A real tiny inference on every model; 503 when one fails or stalls."""
        checks, healthy = {}, True
        for task in self._handles:
            try:
                checks[TASKS[task]] = await self._call(
                    task, "health", timeout_s=self._settings.health_timeout_s)
            except Exception as err:  # a stalled or broken replica: report, don't raise
                healthy = False
                checks[TASKS[task]] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        return JSONResponse({"status": "ok" if healthy else "unhealthy", "models": checks},
                            status_code=200 if healthy else 503)

    # --- Open Inference Protocol v2 --------------------------------------------------------
    @api.get("/v2")
    async def v2_server(self) -> JSONResponse:
        return JSONResponse({"name": "vitpipe", "version": "1",
                             "extensions": ["binary_tensor_data"]})

    @api.get("/v2/health/live")
    async def v2_live(self) -> JSONResponse:
        return JSONResponse({"live": True})

    @api.get("/v2/health/ready")
    async def v2_ready(self) -> JSONResponse:
        try:
            for task in self._handles:
                self._info[task] = await self._call(
                    task, "describe", timeout_s=self._settings.health_timeout_s)
        except RequestError as err:
            return JSONResponse({"ready": False}, status_code=503, headers=err.headers)
        return JSONResponse({"ready": True})

    async def _v2_model(self, request: Request, name: str, version: str | None = None,
                        *, fresh: bool = True):
        """``(task, describe())`` of the model a v2 path names (registered or short name).

        ``fresh=False`` (inference) uses the cached description unless a version is asked
        for that the cache does not show: no extra model call per request.
        """
        self._authorize(request)
        task = SHORT_NAMES.get(name)
        if task is None:
            task = next((t for t, i in self._info.items() if i.get("name") == name), None)
        if task is None:
            # registered names are learnt from describe(); ask each model once
            for candidate in self._handles:
                info = await self._geometry(candidate)
                if info.get("name") == name:
                    task = candidate
        if task is None or task not in self._handles:
            raise not_found(f"unknown model {name!r}")
        info = self._info.get(task)
        stale = info is None or "settings" not in info or (
            version is not None and version != info.get("version"))
        if fresh or stale:
            info = await self._call(task, "describe")
            self._info[task] = info
        if version is not None and version != info["version"]:
            raise not_found(f"model {name!r} serves version {info['version']}, not {version}")
        return task, info

    @api.get("/v2/models/{name}")
    async def v2_metadata(self, request: Request, name: str) -> JSONResponse:
        task, info = await self._v2_model(request, name)
        return JSONResponse(_metadata(info))

    @api.get("/v2/models/{name}/versions/{version}")
    async def v2_metadata_version(self, request: Request, name: str, version: str) -> JSONResponse:
        task, info = await self._v2_model(request, name, version)
        return JSONResponse(_metadata(info))

    @api.get("/v2/models/{name}/ready")
    async def v2_model_ready(self, request: Request, name: str) -> JSONResponse:
        task, info = await self._v2_model(request, name)
        return JSONResponse({"name": info["name"], "ready": True})

    @api.post("/v2/models/{name}/infer")
    async def v2_infer(self, request: Request, name: str) -> Response:
        return await self._v2_infer(request, name, None)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_infer_version(self, request: Request, name: str, version: str) -> Response:
        return await self._v2_infer(request, name, version)

    async def _v2_infer(self, request: Request, name: str, version: str | None) -> Response:
        task, info = await self._v2_model(request, name, version, fresh=False)
        body = await read_body(request.headers, request.stream(),
                               max_bytes=self._settings.max_body_bytes)
        image_size, patch_size = info["image_size"], info["patch_size"]
        num_patches = (image_size // patch_size) ** 2
        parsed = await self._run(
            lambda: v2.parse_image_request(
                body, request.headers.get(v2.HEADER_LENGTH),
                patch_shape=(num_patches, patch_size * patch_size * 3),
                max_pixels=self._settings.max_pixels,
            )
        )
        if parsed.input_name == "image":
            prepared = await self._run(_preprocess_batch, parsed.array, image_size, patch_size,
                                       bool(info.get("letterbox")))
        else:
            hw = (image_size, image_size)
            prepared = [(np.ascontiguousarray(p), hw) for p in parsed.array]
        results = await _gather_or_cancel([
            self._call(task, "infer", patches, image_size, patch_size, orig_hw)
            for patches, orig_hw in prepared
        ])
        outputs = v2.batch_outputs(results, info["settings"])
        content, headers = v2.build_response(
            model_name=results[0]["name"], model_version=results[0]["version"],
            request_id=parsed.request_id, outputs=outputs, requested=parsed.requested,
            binary_output=parsed.binary_output,
        )
        return Response(content=content, headers=headers)


# --- the application -------------------------------------------------------------------------
# A model replica (or a colocated one): queue enough for full batches; scale out as soon as
# requests wait (measured with bench_autoscale.py: docs/serving.md, "Autoscaling").
MODEL_MAX_ONGOING = 64
MODEL_AUTOSCALING = {
    "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2,
    "metrics_interval_s": 2, "look_back_period_s": 10,
    "upscale_delay_s": 5, "downscale_delay_s": 30,
}

# A hung model replica: its check_health fails once a batch has run past stall_timeout_s (or
# the probe itself times out); three failures in a row and Serve replaces it.
MODEL_HEALTH_CHECK = {"health_check_period_s": 5, "health_check_timeout_s": 10}

ModelDeployment = serve.deployment(
    ModelServer,
    name="classifier",
    max_ongoing_requests=MODEL_MAX_ONGOING,
    autoscaling_config=MODEL_AUTOSCALING,
    ray_actor_options={"num_cpus": 0.5},
    graceful_shutdown_timeout_s=30,
    **MODEL_HEALTH_CHECK,
)


class AppArgs(StrictModel):
    """Arguments of :func:`build_app` (``serve run components.serving.app:build_app k=v``)."""

    classifier_uri: str | None = Field(DEFAULT_CLASSIFIER_URI, description="None: no classifier")
    detector_uri: str | None = Field(DEFAULT_DETECTOR_URI, description="None: no detector")
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI")
    model_settings: dict[str, Any] = Field(
        default_factory=dict, description="ModelServerSettings fields for both models")
    ingress_settings: dict[str, Any] = Field(default_factory=dict)
    ingress_env: dict[str, str] = Field(
        default_factory=dict,
        description=f"env vars of the ingress replicas (e.g. {TOKEN_ENV}; in Kubernetes set "
                    "it from a Secret on the pods instead)")
    model_num_cpus: float = Field(
        0.5, gt=0, description="per model replica; a fraction lets the app and an added "
                               "replica fit a 2-core node (Ray does not cap the threads)")
    ingress_num_cpus: float = Field(0.5, gt=0)
    num_gpus: float = 0.0
    replicas: int | None = Field(None, description="fixed replicas instead of autoscaling")
    colocate: bool = Field(
        False, description="run the models inside the ingress replicas (one deployment, one "
                           "hop less per request) instead of their own deployments")

    @field_validator("classifier_uri", "detector_uri", "tracking_uri", mode="before")
    @classmethod
    def _none_words(cls, value):
        """``serve run ... detector_uri=null`` passes the string "null": that means None."""
        if isinstance(value, str) and value.strip().lower() in ("", "null", "none"):
            return None
        return value


def build_app(args: dict[str, Any] | AppArgs | None = None) -> serve.Application:
    """The application: the ingress bound to a classifier and/or a detector deployment."""
    args = AppArgs.model_validate(args or {}) if not isinstance(args, AppArgs) else args
    if not args.classifier_uri and not args.detector_uri:
        raise ValueError("serve at least one model: classifier_uri or detector_uri")
    scaling = {"num_replicas": args.replicas, "autoscaling_config": None} if args.replicas else {}
    models = {
        task: ModelServerSettings.model_validate({**args.model_settings, "model_uri": uri})
        for task, uri in (("classification", args.classifier_uri), ("detection", args.detector_uri))
        if uri
    }
    if args.colocate:
        return _colocated_app(args, models, scaling)
    bound = {}
    for task, settings in models.items():
        bound[TASKS[task]] = ModelDeployment.options(
            name=TASKS[task], user_config=settings.model_dump(),
            ray_actor_options={"num_cpus": args.model_num_cpus,
                               **({"num_gpus": args.num_gpus} if args.num_gpus else {})},
            **scaling,
        ).bind(task, args.tracking_uri)
    ingress = Ingress.options(
        user_config=IngressSettings.model_validate(args.ingress_settings).model_dump(),
        ray_actor_options={
            "num_cpus": args.ingress_num_cpus,
            **({"runtime_env": {"env_vars": dict(args.ingress_env)}} if args.ingress_env else {}),
        },
        **scaling,
    )
    return ingress.bind(bound.get("classifier"), bound.get("detector"))


def _colocated_app(args: AppArgs, models: dict[str, ModelServerSettings],
                   scaling: dict[str, Any]) -> serve.Application:
    """One ``server`` deployment: the ingress with the models in its own replicas.

    Its resources are the model deployments' (a GPU each when ``num_gpus``), its autoscaling
    the model deployments' (each replica holds a model and takes its share of requests)."""
    settings = ColocatedSettings.model_validate(
        {**args.ingress_settings, "models": {t: m.model_dump() for t, m in models.items()}})
    server = Ingress.options(
        name="server",
        max_ongoing_requests=MODEL_MAX_ONGOING,
        user_config=settings.model_dump(),
        ray_actor_options={
            "num_cpus": max(args.model_num_cpus, args.ingress_num_cpus),
            **({"num_gpus": args.num_gpus} if args.num_gpus else {}),
            **({"runtime_env": {"env_vars": dict(args.ingress_env)}} if args.ingress_env else {}),
        },
        **(scaling or {"autoscaling_config": MODEL_AUTOSCALING}),
        **MODEL_HEALTH_CHECK,
    )
    return server.bind(local_tasks=tuple(models), tracking_uri=args.tracking_uri)


app = build_app()
colocated_app = build_app({"colocate": True})  # → pipelines/configs/serve_colocated.yaml
