"""Request body → RGB image, refusing bad input with the right 4xx before any model work.

Order of checks (cheapest first, nothing decoded before the limits hold):

1. content type: ``image/jpeg|png|webp`` raw body or ``multipart/form-data`` (else 415);
2. body size: ``Content-Length`` and the bytes actually read (413 past ``max_body_bytes``);
3. empty body / form without a file part (400);
4. ``components.data.image_io.decode_image``: the pixel count read from the header
   (413 past ``max_pixels``, nothing decoded), then the decode (400 for non-image or
   truncated bytes), EXIF orientation applied, every pixel format converted to RGB.

``read_body`` runs on the event loop (it awaits the socket); ``decode_image_bytes`` is
CPU work and is called from a thread pool by the ingress.
"""

from __future__ import annotations

from typing import AsyncIterator

import numpy as np

from components.serving.errors import bad_request, too_large, unsupported_media

IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
MULTIPART = "multipart/form-data"


def media_type(content_type: str | None) -> str:
    """``"image/JPEG; q=1"`` → ``"image/jpeg"`` (``""`` when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> str:
    """The request's media type when it can hold an image, else a 415 error."""
    kind = media_type(content_type)
    if kind in IMAGE_TYPES or kind == MULTIPART:
        return kind
    shown = kind or "none"
    raise unsupported_media(
        f"content type {shown!r} is not accepted: send image/jpeg, image/png or image/webp "
        f"as the body, or multipart/form-data with one image file"
    )


async def read_body(
    headers, stream: AsyncIterator[bytes], *, max_bytes: int
) -> bytes:
    """Read a request body of at most ``max_bytes``, stopping at the first byte over it."""
    declared = headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise bad_request(f"Content-Length {declared!r} is not a number") from None
        if declared_bytes > max_bytes:
            raise too_large(f"body of {declared_bytes} bytes exceeds the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            raise too_large(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes_from_form(headers, body: bytes) -> bytes:
    """The first file part of a ``multipart/form-data`` body (its type must be an image)."""
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.datastructures import UploadFile

    async def once() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(headers, once(), max_files=4, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise bad_request(f"malformed multipart body: {err.message}") from None
    try:
        for _, value in form.multi_items():
            if isinstance(value, UploadFile):
                part_type = media_type(value.content_type)
                if part_type not in IMAGE_TYPES and part_type not in ("", "application/octet-stream"):
                    raise unsupported_media(
                        f"form file {value.filename!r} has content type {part_type!r}: "
                        f"send image/jpeg, image/png or image/webp"
                    )
                return await value.read()
    finally:
        await form.close()
    raise bad_request("multipart body has no file part: send the image as a file field")


def decode_image_bytes(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Image bytes → RGB uint8 ``[H, W, 3]``; 400 for empty/non-image/truncated, 413 if huge."""
    from components.data.image_io import BadImageError, decode_image

    if not data:
        raise bad_request("empty body: send an image", code="empty_body")
    try:
        return decode_image(data, max_pixels=max_pixels)  # pixel limit read from the header
    except BadImageError as err:
        if err.reason.startswith("too many pixels"):
            raise too_large(f"image has {err.reason}") from None
        raise bad_request(f"bad image: {err.reason}", code="bad_image") from None
