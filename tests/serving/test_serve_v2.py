"""Open Inference Protocol v2 tensors: JSON and binary requests, malformed input, responses
read back with tritonclient's own response parser (the standard client's view)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tritonclient.http import InferResult

from components.serving import v2
from components.serving.errors import RequestError

PATCH_SHAPE = (16, 768)


def parse(body: bytes, header_length=None, max_pixels=10**6):
    return v2.parse_image_request(body, header_length, patch_shape=PATCH_SHAPE, max_pixels=max_pixels)


def json_request(array: np.ndarray, name="image", **extra) -> bytes:
    tensor = {"name": name, "shape": list(array.shape), "datatype": "UINT8",
              "data": array.reshape(-1).tolist()}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def test_json_and_binary_requests_give_the_same_array():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    from_json = parse(json_request(images, id="r1"))
    assert from_json.input_name == "image" and from_json.request_id == "r1"
    np.testing.assert_array_equal(from_json.array, images)
    header = json.dumps({"inputs": [{"name": "image", "shape": [2, 5, 7, 3], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": images.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    from_binary = parse(header + images.tobytes(), str(len(header)))
    np.testing.assert_array_equal(from_binary.array, images)
    assert from_binary.binary_output


def test_patches_input_must_match_the_model():
    patches = np.zeros((1, *PATCH_SHAPE), np.uint8)
    assert parse(json_request(patches, name="patches")).input_name == "patches"
    with pytest.raises(RequestError) as info:
        parse(json_request(np.zeros((1, 4, 768), np.uint8), name="patches"))
    assert info.value.status == 400


@pytest.mark.parametrize("body, status", [
    (b"", 400),
    (b"{not json", 400),
    (b"[1, 2]", 400),
    (b'{"inputs": "nope"}', 400),
    (b'{"inputs": []}', 400),
    (b'{"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8"}]}', 400),
    (b'{"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "FP32", "data": [0]}]}', 400),
    (b'{"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [1, 2]}]}', 400),
    (b'{"inputs": [{"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 300]}]}', 400),
    (b'{"inputs": [{"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 0.5]}]}', 400),
    (b'{"inputs": [{"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": ["a", "b", "c"]}]}', 400),
    (b'{"inputs": [{"name": "image", "shape": [1, 2, 2], "datatype": "UINT8", "data": [0, 0, 0, 0]}]}', 400),
    (b'{"inputs": [{"name": "other", "shape": [1], "datatype": "UINT8", "data": [0]}]}', 400),
    (b'{"inputs": [{"name": "image", "shape": [1, 2000, 2000, 3], "datatype": "UINT8", "data": [0]}]}', 413),
    (b'{"inputs": [{"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 3]}], "bogus": 1}', 400),
])
def test_malformed_requests_are_4xx(body, status):
    with pytest.raises(RequestError) as info:
        parse(body)
    assert info.value.status == status
    assert info.value.body()["error"]


def test_binary_sizes_are_checked():
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": 12}}]}).encode()
    with pytest.raises(RequestError):  # fewer bytes than announced
        parse(header + b"\0" * 5, str(len(header)))
    with pytest.raises(RequestError):  # header length past the body
        parse(header, str(len(header) + 100))
    with pytest.raises(RequestError):
        parse(header + b"\0" * 12, "twelve")


@pytest.mark.parametrize("binary", [False, True])
def test_responses_parse_with_the_standard_client(binary):
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    outputs = v2.classification_outputs(probabilities, top_k=2)
    body, headers = v2.build_response(model_name="m", model_version="3", request_id="x",
                                      outputs=outputs, requested=None, binary_output=binary)
    result = InferResult.from_response_body(body, header_length=(
        int(headers[v2.HEADER_LENGTH]) if binary else None))
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities)
    np.testing.assert_array_equal(result.as_numpy("top_labels"), [[0, 1], [2, 0]])
    np.testing.assert_allclose(result.as_numpy("top_scores"), [[0.7, 0.2], [0.8, 0.1]])
    assert result.get_response()["model_version"] == "3"


def test_detection_outputs_are_padded():
    results = [{"boxes": np.ones((2, 4), np.float32), "scores": np.array([0.9, 0.5], np.float32),
                "labels": np.array([1, 0])},
               {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                "labels": np.zeros(0, np.int64)}]
    out = v2.detection_outputs(results, max_detections=3)
    assert out["boxes"].shape == (2, 3, 4) and out["num_detections"].tolist() == [2, 0]
    assert out["labels"].tolist() == [[1, 0, -1], [-1, -1, -1]]


def test_unknown_requested_output_is_400():
    outputs = v2.classification_outputs(np.ones((1, 3), np.float32) / 3, top_k=1)
    with pytest.raises(RequestError) as info:
        v2.build_response(model_name="m", model_version="1", request_id=None, outputs=outputs,
                          requested=[v2.RequestedOutput(name="nope")], binary_output=False)
    assert info.value.status == 400
