"""Open Inference Protocol v2 (KServe v2 / Triton) REST: request parsing, response building.

Served tensors (documented in ``docs/serving.md`` and in ``GET /v2/models/{name}``):

inputs (one of)
  ``image``    UINT8 ``[B, H, W, 3]`` RGB images of any size (each one is put through the
               eval transform; detection boxes come back in pixels of these images);
  ``patches``  UINT8 ``[B, N, P*P*3]`` already-patchified model input (the batch contract;
               boxes come back in pixels of the ``image_size`` model input).
outputs, classification
  ``probabilities`` FP32 ``[B, C]``; ``top_labels`` INT64 ``[B, k]``; ``top_scores`` FP32 ``[B, k]``.
outputs, detection (padded to ``K = max_detections``; ``num_detections`` says how many are real)
  ``boxes`` FP32 ``[B, K, 4]`` xyxy pixels; ``scores`` FP32 ``[B, K]``; ``labels`` INT64
  ``[B, K]`` (-1 = padding); ``num_detections`` INT32 ``[B]``.

Tensor data is accepted as JSON (``data``, flat or nested, row-major) or with the binary
tensor extension (``Inference-Header-Content-Length`` header, ``parameters.binary_data_size``
per input), and returned in binary when the request asks for it (``binary_data_output`` or
per-output ``parameters.binary_data``), which is what ``tritonclient.http`` does by default.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.serving.errors import RequestError, bad_request, too_large

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_IMAGES_PER_REQUEST = 256

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
V2_NAME = {dtype: name for name, dtype in DTYPES.items()}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputTensor(_Strict):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(_Strict):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(_Strict):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None


@dataclass
class ParsedInfer:
    """A validated v2 infer request: the one image-like input, as an array."""

    request_id: str | None
    input_name: str  # "image" | "patches"
    array: np.ndarray  # uint8 [B, H, W, 3] or [B, N, P*P*3]
    requested: list[RequestedOutput] | None
    binary_output: bool


def parse_infer(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """Split body into the JSON header and binary section, validate the JSON."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise bad_request(f"{HEADER_LENGTH} {header_length!r} is not a number") from None
        if not 0 < json_size <= len(body):
            raise bad_request(f"{HEADER_LENGTH} {json_size} is outside the body")
        header, binary = body[:json_size], body[json_size:]
    else:
        header, binary = body, b""
    if not header.strip():
        raise bad_request("empty v2 infer request", code="bad_v2_request")
    try:
        raw = json.loads(header)
    except RecursionError:  # nesting deeper than the interpreter's stack
        raise bad_request("v2 infer request is nested too deeply", code="bad_v2_request") from None
    except ValueError as err:  # bad JSON or UTF-8, an integer of over 4,300 digits
        raise bad_request(f"v2 infer request is not valid JSON: {err}", code="bad_v2_request") from None
    try:
        request = InferRequest.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise bad_request(
            f"v2 infer request is malformed at {where}: {first['msg']}", code="bad_v2_request"
        ) from None
    return request, binary


def tensor_array(tensor: InputTensor, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor as an array of its shape; returns it and the new binary offset."""
    if tensor.datatype not in DTYPES:
        raise bad_request(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not supported")
    dtype = DTYPES[tensor.datatype]
    if any(d < 0 for d in tensor.shape):
        raise bad_request(f"input {tensor.name!r}: shape {tensor.shape} has a negative size")
    count = math.prod(tensor.shape)
    size = tensor.parameters.get("binary_data_size")
    if size is not None:
        if tensor.data is not None:
            raise bad_request(f"input {tensor.name!r} has both data and binary_data_size")
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise bad_request(f"input {tensor.name!r}: binary_data_size {size} is outside the body")
        if size != count * dtype.itemsize:
            raise bad_request(
                f"input {tensor.name!r}: {size} binary bytes do not hold shape {tensor.shape} "
                f"of {tensor.datatype}"
            )
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
        return array.reshape(tensor.shape), offset + size
    if tensor.data is None:
        raise bad_request(f"input {tensor.name!r} has no data")
    try:
        values = np.asarray(tensor.data)
    except (ValueError, TypeError):
        raise bad_request(f"input {tensor.name!r}: data is not a rectangular array") from None
    if values.size != count:
        raise bad_request(
            f"input {tensor.name!r}: {values.size} values do not fill shape {tensor.shape}"
        )
    if values.size and dtype.kind in "ui":
        if values.dtype.kind not in "iub":
            raise bad_request(f"input {tensor.name!r}: {tensor.datatype} data must be integers")
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise bad_request(f"input {tensor.name!r}: values outside the {tensor.datatype} range")
    elif values.size and values.dtype.kind not in "iufb":
        raise bad_request(f"input {tensor.name!r}: data must be numbers")
    return values.astype(dtype).reshape(tensor.shape), offset


def parse_image_request(
    body: bytes, header_length: str | None, *, patch_shape: tuple[int, int], max_pixels: int
) -> ParsedInfer:
    """Validate a v2 infer request for a vitpipe model: one ``image`` or ``patches`` input.

    ``patch_shape`` is ``(N, P*P*3)`` of the served model, to check a ``patches`` input.
    """
    request, binary = parse_infer(body, header_length)
    if len(request.inputs) != 1:
        raise bad_request(
            f"expected exactly one input ('image' or 'patches'), got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    if tensor.name not in ("image", "patches"):
        raise bad_request(f"unknown input {tensor.name!r}: use 'image' or 'patches'")
    if tensor.datatype != "UINT8":
        raise bad_request(f"input {tensor.name!r} must be UINT8, got {tensor.datatype}")
    want_rank = 4 if tensor.name == "image" else 3
    if len(tensor.shape) != want_rank:
        want = "[B, H, W, 3]" if tensor.name == "image" else "[B, N, P*P*3]"
        raise bad_request(f"input {tensor.name!r} must have shape {want}, got {tensor.shape}")
    batch = tensor.shape[0]
    if not 1 <= batch <= MAX_IMAGES_PER_REQUEST:
        raise bad_request(f"batch size {batch} is outside 1..{MAX_IMAGES_PER_REQUEST}")
    if tensor.name == "image":
        height, width, channels = tensor.shape[1:]
        if channels != 3 or height < 1 or width < 1:
            raise bad_request(f"input 'image' must be [B, H, W, 3] RGB, got {tensor.shape}")
        if height * width > max_pixels:
            raise too_large(f"image of {width}x{height} pixels exceeds the limit of {max_pixels}")
    elif tuple(tensor.shape[1:]) != tuple(patch_shape):
        raise bad_request(
            f"input 'patches' must be [B, {patch_shape[0]}, {patch_shape[1]}] for this model, "
            f"got {tensor.shape}"
        )
    array, _ = tensor_array(tensor, binary, 0)
    binary_output = bool(request.parameters.get("binary_data_output", False))
    return ParsedInfer(request.id, tensor.name, array, request.outputs, binary_output)


def build_response(
    *, model_name: str, model_version: str, request_id: str | None,
    outputs: dict[str, np.ndarray], requested: list[RequestedOutput] | None,
    binary_output: bool,
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a v2 infer response (JSON, or JSON + binary section)."""
    if requested is None:
        chosen = [(name, binary_output) for name in outputs]
    else:
        chosen = []
        for req in requested:
            if req.name not in outputs:
                raise bad_request(
                    f"unknown output {req.name!r}; this model has {sorted(outputs)}"
                )
            chosen.append((req.name, bool(req.parameters.get("binary_data", binary_output))))
    entries, blobs = [], []
    for name, as_binary in chosen:
        array = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {
            "name": name, "shape": list(array.shape), "datatype": V2_NAME[array.dtype],
        }
        if as_binary:
            blob = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    header: dict[str, Any] = {
        "model_name": model_name, "model_version": model_version, "outputs": entries,
    }
    if request_id is not None:
        header["id"] = request_id
    head = json.dumps(header).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(head)),
    }


def classification_outputs(probabilities: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    """``probabilities`` FP32 ``[B, C]`` → the v2 classification outputs."""
    k = min(top_k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return {
        "probabilities": probabilities.astype(np.float32),
        "top_labels": order.astype(np.int64),
        "top_scores": np.take_along_axis(probabilities, order, axis=1).astype(np.float32),
    }


def batch_outputs(results: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, np.ndarray]:
    """A batch's per-image results (a task's ``postprocess``) → the v2 outputs: class
    probabilities, or boxes."""
    if "probabilities" in results[0]:
        return classification_outputs(np.stack([r["probabilities"] for r in results]), settings["top_k"])
    return detection_outputs(results, settings["max_detections"])


def detection_outputs(results: list[dict[str, np.ndarray]], max_detections: int) -> dict[str, np.ndarray]:
    """Per-image ``{boxes [K,4], scores [K], labels [K]}`` → padded v2 detection outputs."""
    batch = len(results)
    boxes = np.zeros((batch, max_detections, 4), np.float32)
    scores = np.zeros((batch, max_detections), np.float32)
    labels = np.full((batch, max_detections), -1, np.int64)
    counts = np.zeros((batch,), np.int32)
    for i, result in enumerate(results):
        k = min(len(result["scores"]), max_detections)
        boxes[i, :k] = result["boxes"][:k]
        scores[i, :k] = result["scores"][:k]
        labels[i, :k] = result["labels"][:k]
        counts[i] = k
    return {"boxes": boxes, "scores": scores, "labels": labels, "num_detections": counts}


def model_metadata(
    *, name: str, version: str, task: str, class_names: list[str], image_size: int,
    patch_size: int, top_k: int, max_detections: int,
) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the tensors this model takes and returns."""
    num_patches = (image_size // patch_size) ** 2
    inputs = [
        {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
        {"name": "patches", "datatype": "UINT8", "shape": [-1, num_patches, patch_size * patch_size * 3]},
    ]
    from components.tasks import get_task

    outputs = get_task(task).output_specs(num_classes=len(class_names), top_k=top_k,
                                          max_detections=max_detections)
    return {
        "name": name, "versions": [version], "platform": f"vitpipe_{task}",
        "inputs": inputs, "outputs": outputs,
        "parameters": {"class_names": class_names, "image_size": image_size,
                       "patch_size": patch_size, "input_note": "send one of the inputs"},
    }


__all__ = [
    "RequestError", "InferRequest", "ParsedInfer", "parse_infer", "parse_image_request",
    "batch_outputs", "build_response", "classification_outputs", "detection_outputs", "model_metadata",
    "HEADER_LENGTH",
]
