"""Request errors: one exception type carrying its HTTP status, rendered as JSON.

The body is ``{"error": "<message>", "code": "<machine-readable code>"}``: the ``error``
string is what the Open Inference Protocol v2 expects, ``code`` lets clients branch.
Everything a client can cause is a :class:`RequestError` (4xx). A model call that cannot be
answered (its replica died, hung or is overloaded) is a 503 with ``Retry-After``
(:func:`unavailable`); :func:`is_replica_loss` names the failures worth one retry on
another replica.
"""

from __future__ import annotations

from typing import Any

import grpc
from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

# What a DeploymentHandle call raises when the replica it was routed to went away (killed,
# crashed, its node lost, unreachable over Serve's gRPC data plane) or refused it
# (backpressure). Inference is idempotent, so such a request can run again elsewhere.
# RayActorError covers ActorDiedError and ActorUnavailableError.
REPLICA_LOSS = (RayActorError, ReplicaUnavailableError, BackPressureError, WorkerCrashedError,
                NodeDiedError, grpc.aio.AioRpcError)


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP status (4xx, or 503)."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.code}


def bad_request(message: str, code: str = "bad_request") -> RequestError:
    return RequestError(400, code, message)


def too_large(message: str) -> RequestError:
    return RequestError(413, "too_large", message)


def unsupported_media(message: str) -> RequestError:
    return RequestError(415, "unsupported_media_type", message)


def unauthorized(message: str = "missing or wrong bearer token") -> RequestError:
    return RequestError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def not_found(message: str) -> RequestError:
    return RequestError(404, "not_found", message)


def unavailable(message: str, retry_after_s: int = 1) -> RequestError:
    """503: the model could not answer now; ``Retry-After`` tells the client when to retry."""
    return RequestError(503, "unavailable", message, {"Retry-After": str(max(retry_after_s, 0))})


def is_replica_loss(err: BaseException) -> bool:
    """Whether ``err`` (from a model deployment call) means its replica is gone or refused it."""
    return isinstance(err, REPLICA_LOSS) or isinstance(getattr(err, "cause", None), REPLICA_LOSS)


def describe_failure(err: BaseException) -> str:
    """One line for the log: the exception type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__
