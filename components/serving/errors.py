"""Client errors: one exception type carrying its HTTP status, rendered as JSON.

The body is ``{"error": "<message>", "code": "<machine-readable code>"}``: the ``error``
string is what the Open Inference Protocol v2 expects, ``code`` lets clients branch.
Everything a client can cause is a :class:`RequestError` (4xx); anything else is a bug.
"""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status (4xx, or 503 when busy)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code}


def bad_request(message: str, code: str = "bad_request") -> RequestError:
    return RequestError(400, code, message)


def too_large(message: str) -> RequestError:
    return RequestError(413, "too_large", message)


def unsupported_media(message: str) -> RequestError:
    return RequestError(415, "unsupported_media_type", message)


def unauthorized(message: str = "missing or wrong bearer token") -> RequestError:
    return RequestError(401, "unauthorized", message)


def not_found(message: str) -> RequestError:
    return RequestError(404, "not_found", message)


def unavailable(message: str) -> RequestError:
    return RequestError(503, "unavailable", message)
