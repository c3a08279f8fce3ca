"""Generated bad input for the request parsers: whatever a client sends, the answer is a
value or a 4xx ``RequestError``, never another exception (which the app would turn into a
500).

Hypothesis generates v2 infer requests (valid in structure, wrong in every field), raw
bytes, byte-level mutations of real images in every format the decoder takes, and
multipart bodies. ``derandomize`` keeps CI runs identical; two hand-written cases pin the
JSON bombs the generators did not reach (found by reading ``parse_infer``).
"""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.datastructures import Headers

from components.serving import v2
from components.serving.decode import decode_image_bytes, image_bytes_from_form
from components.serving.errors import RequestError

FUZZ = settings(max_examples=1000, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PATCH_SHAPE = (16, 768)  # a 64-px model with 16-px patches
MAX_PIXELS = 1_000_000


def value_or_4xx(fn, *args, **kwargs):
    try:
        result = fn(*args, **kwargs)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return result
    except RequestError as err:
        assert 400 <= err.status < 500, (err.status, str(err))
        return err


def parse(body: bytes, header_length: str | None = None):
    return value_or_4xx(v2.parse_image_request, body, header_length,
                        patch_shape=PATCH_SHAPE, max_pixels=MAX_PIXELS)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=True), st.text(max_size=5))
json_value = st.recursive(
    json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                       st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20)
tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["image", "patches", "other"]),
     "shape": st.lists(st.integers(-3, 40), max_size=5),
     "datatype": st.sampled_from([*v2.DTYPES, "BYTES", "uint8"])},
    optional={"data": st.one_of(json_value, st.lists(st.integers(-2, 300), max_size=60)),
              "parameters": st.one_of(json_value, st.fixed_dictionaries(
                  {"binary_data_size": st.one_of(st.integers(-5, 5000), json_leaf)}))})
infer_request = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensor, max_size=2), json_value)},
    optional={"id": json_value, "parameters": json_value, "outputs": json_value})


@FUZZ
@given(infer_request, st.binary(max_size=4000), st.booleans(), st.text(max_size=6))
def test_v2_requests_parse_or_are_4xx(request, binary, true_length, other_length):
    header = json.dumps(request).encode()
    parsed = parse(header + binary, str(len(header)) if true_length else other_length or None)
    if isinstance(parsed, v2.ParsedInfer):
        assert parsed.array.dtype == np.uint8 and parsed.array.ndim in (3, 4)


@FUZZ
@given(st.binary(max_size=3000), st.one_of(st.none(), st.text(max_size=10)))
def test_v2_raw_bytes_are_4xx(body, header_length):
    assert isinstance(parse(body, header_length), RequestError)


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the interpreter's stack: RecursionError
    b'{"inputs": [{"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 1, '
    + b"7" * 5000 + b"]}]}",  # an integer of over 4,300 digits: ValueError, not JSONDecodeError
], ids=["nested-100k-deep", "5000-digit-integer"])
def test_v2_json_bombs_are_400(body):
    err = parse(body)
    assert isinstance(err, RequestError) and err.status == 400


def _encoded_images() -> list[bytes]:
    """One small image in every format and pixel mode the decoder converts."""
    rgb = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    images = {
        "PNG": [Image.fromarray(rgb), Image.fromarray(rgb).convert("P"),
                Image.fromarray(rgb).convert("RGBA"),
                Image.fromarray(rgb[..., 0].astype(np.uint16) * 256)],
        "JPEG": [Image.fromarray(rgb), Image.fromarray(rgb).convert("L"),
                 Image.fromarray(rgb).convert("CMYK")],
        "WEBP": [Image.fromarray(rgb)], "GIF": [Image.fromarray(rgb).convert("P")],
        "BMP": [Image.fromarray(rgb)], "ICO": [Image.fromarray(rgb).convert("RGBA")],
        "TIFF": [Image.fromarray(rgb), Image.fromarray(rgb[..., 0].astype(np.float32))],
    }
    encoded = []
    for fmt, pictures in images.items():
        for picture in pictures:
            buffer = io.BytesIO()
            picture.save(buffer, fmt)
            encoded.append(buffer.getvalue())
    return encoded


IMAGES = _encoded_images()


def test_every_seed_image_decodes():
    for data in IMAGES:
        decoded = decode_image_bytes(data, max_pixels=MAX_PIXELS)
        if data.startswith(b"\x00\x00\x01\x00"):  # ICO: Pillow saves a 16-px icon of it
            assert decoded.shape == (13, 16, 3)
        else:
            assert decoded.shape == (20, 24, 3)


@FUZZ
@given(st.sampled_from(range(len(IMAGES))),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       st.one_of(st.none(), st.integers(0, 10**6)))
def test_mutated_images_decode_or_are_4xx(index, writes, cut_at):
    data = bytearray(IMAGES[index])
    for position, byte in writes:
        data[position % len(data)] = byte
    if cut_at is not None:
        data = data[: cut_at % (len(data) + 1)]
    decoded = value_or_4xx(decode_image_bytes, bytes(data), max_pixels=MAX_PIXELS)
    if isinstance(decoded, np.ndarray):
        assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3


@FUZZ
@given(st.binary(max_size=500), st.text(max_size=40),
       st.sampled_from(["multipart/form-data; boundary=xyz", "multipart/form-data",
                        "multipart/form-data; boundary=", 'multipart/form-data; boundary="a b"']))
def test_multipart_bodies_give_a_file_or_are_4xx(payload, field_name, content_type):
    body = (b'--xyz\r\nContent-Disposition: form-data; name="' + field_name.encode()
            + b'"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n' + payload + b"\r\n--xyz--\r\n")
    headers = Headers({"content-type": content_type, "content-length": str(len(body))})
    found = value_or_4xx(image_bytes_from_form, headers, body)
    assert isinstance(found, (bytes, RequestError))
