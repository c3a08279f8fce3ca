"""Request decoding and limits, without a server: content types, sizes, multipart, images."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from starlette.datastructures import Headers

from components.serving.decode import (
    check_content_type, decode_image_bytes, image_bytes_from_form, read_body,
)
from components.serving.errors import RequestError

from serve_testlib import encode


def run(coro):
    return asyncio.run(coro)


async def chunks(*parts: bytes):
    for part in parts:
        yield part


def status_of(fn, *args, **kwargs) -> int:
    with pytest.raises(RequestError) as info:
        result = fn(*args, **kwargs)
        if asyncio.iscoroutine(result):
            run(result)
    return info.value.status


@pytest.mark.parametrize("content_type, expected", [
    ("image/jpeg", "image/jpeg"), ("IMAGE/PNG; foo=bar", "image/png"), ("image/webp", "image/webp"),
    ("multipart/form-data; boundary=x", "multipart/form-data"),
])
def test_accepted_content_types(content_type, expected):
    assert check_content_type(content_type) == expected


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/json", "image/gif"])
def test_other_content_types_are_415(content_type):
    assert status_of(check_content_type, content_type) == 415


def test_body_limit_from_content_length_and_from_stream():
    assert status_of(read_body, Headers({"content-length": "11"}), chunks(b"x" * 11), max_bytes=10) == 413
    # no Content-Length (chunked): the limit holds on the bytes actually read
    assert status_of(read_body, Headers({}), chunks(b"x" * 6, b"x" * 6), max_bytes=10) == 413
    assert status_of(read_body, Headers({"content-length": "ten"}), chunks(b""), max_bytes=10) == 400
    assert run(read_body(Headers({}), chunks(b"ab", b"cd"), max_bytes=4)) == b"abcd"


def multipart(parts: list[tuple[str, str | None, str, bytes]], boundary: str = "BOUNDARY") -> tuple[Headers, bytes]:
    body = b""
    for name, filename, ctype, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                 f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return Headers({"content-type": f"multipart/form-data; boundary={boundary}"}), body


def test_multipart_returns_the_file_part(sample_image):
    png = encode(sample_image)
    headers, body = multipart([("note", None, "text/plain", b"hello"), ("image", "a.png", "image/png", png)])
    assert run(image_bytes_from_form(headers, body)) == png


def test_multipart_without_file_or_with_wrong_type():
    headers, body = multipart([("note", None, "text/plain", b"hello")])
    assert status_of(image_bytes_from_form, headers, body) == 400
    headers, body = multipart([("image", "a.txt", "text/plain", b"hello")])
    assert status_of(image_bytes_from_form, headers, body) == 415


def test_decode_good_images_of_every_format(sample_image):
    for fmt, kwargs in (("PNG", {}), ("JPEG", {"quality": 95}), ("WEBP", {"lossless": True})):
        image = decode_image_bytes(encode(sample_image, fmt, **kwargs), max_pixels=10**6)
        assert image.shape == sample_image.shape and image.dtype == np.uint8
        assert np.abs(image.astype(int) - sample_image.astype(int)).mean() < 3
    gray = decode_image_bytes(encode(sample_image[..., 0]), max_pixels=10**6)
    assert gray.shape == sample_image.shape


def test_decode_bad_images(sample_image):
    png = encode(sample_image)
    assert status_of(decode_image_bytes, b"", max_pixels=10**6) == 400
    assert status_of(decode_image_bytes, b"not an image at all", max_pixels=10**6) == 400
    assert status_of(decode_image_bytes, png[: len(png) // 2], max_pixels=10**6) == 400
    # over the pixel limit: 413, refused from the header (80 x 120 = 9600 pixels)
    assert status_of(decode_image_bytes, png, max_pixels=9599) == 413
    assert decode_image_bytes(png, max_pixels=9600).shape == (80, 120, 3)
