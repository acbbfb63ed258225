"""The SDK's typed errors, and the one place where a gRPC status becomes one of them.

Callers catch these and never see a ``grpc.RpcError``. The transient ones (``Unavailable``, and
``Overloaded`` after a pause) are worth trying again; the others are not. The client itself retries
only ``Unavailable`` (see ``_retry``).
"""

from __future__ import annotations

import grpc


class EdgefleetClientError(Exception):
    """Root of every error the SDK raises.

    Attributes:
        message: What went wrong; for a server error it includes the status name and the server's details.
        code: The gRPC status name (e.g. ``"UNAVAILABLE"``), or ``None`` when the SDK raised it itself
            without sending anything.
        details: The server's details string, verbatim (``""`` if none).

    Example:
        >>> from edgefleet.client import Client, EdgefleetClientError
        >>> try:  # doctest: +SKIP
        ...     Client("127.0.0.1:9000").generate("Hello")
        ... except EdgefleetClientError as e:
        ...     print(e.code, e.details)
    """

    def __init__(self, message: str, code: str | None = None, details: str = "") -> None:
        # All three go to Exception.args, so the error survives pickling (multiprocessing, Ray) intact.
        super().__init__(message, code, details)
        self.message = message
        self.code = code
        self.details = details

    def __str__(self) -> str:
        return self.message


class DeadlineExceeded(EdgefleetClientError):
    """The call's timeout elapsed before the answer was complete (``DEADLINE_EXCEEDED``)."""


class Overloaded(EdgefleetClientError):
    """The fleet refused the request for lack of capacity or quota (``RESOURCE_EXHAUSTED``).

    Not retried automatically: piling retries onto an overloaded fleet makes it worse. Back off, lower
    the priority, or relax the deadline.

    Attributes:
        retry_after_s: For a rate limit, the seconds until the next request would pass (the server's
            ``retry-after-ms`` trailing metadata); ``None`` otherwise.
    """

    retry_after_s: float | None = None


class InvalidRequest(EdgefleetClientError):
    """The request is malformed (``INVALID_ARGUMENT``, or found locally before sending; then ``code`` is None).

    The message names the offending field.
    """


class Unauthenticated(EdgefleetClientError):
    """The token is missing, wrong, or not allowed to do this (``UNAUTHENTICATED``, ``PERMISSION_DENIED``)."""


class Unavailable(EdgefleetClientError):
    """The server could not be reached or dropped the connection (``UNAVAILABLE``, or ``INTERNAL`` when
    the replica serving the call died: ``code`` keeps the status the server sent).

    Raised after the client's retries are used up, or at once if a stream breaks after text was already
    delivered (resending would duplicate it).
    """


class NotFound(EdgefleetClientError):
    """No such thing on the server: an answer to rate that no edge node keeps (unknown or expired
    request id), or, from Serve's proxy, an application it does not serve."""


class RPCError(EdgefleetClientError):
    """Any other gRPC failure; ``code`` keeps the status name (e.g. ``"INTERNAL"``)."""


_BY_STATUS: dict[grpc.StatusCode, type[EdgefleetClientError]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.NOT_FOUND: NotFound,
}


# Ray Serve's proxy (2.60) answers INTERNAL, not UNAVAILABLE, when the Gateway replica serving the
# call dies; its details carry Ray's actor-death text. Nothing of the answer reached the caller
# then, so it is a dropped connection in all but name, and as safe to retry before the first token.
_REPLICA_LOST = ("actor died unexpectedly", "The actor is dead", "ActorDiedError", "ActorUnavailableError")


def replica_lost(status: grpc.StatusCode, details: str) -> bool:
    """Whether a failed call is a serving replica that died (an INTERNAL that means UNAVAILABLE)."""
    return status == grpc.StatusCode.INTERNAL and any(marker in details for marker in _REPLICA_LOST)


def from_rpc_error(error: grpc.RpcError) -> EdgefleetClientError:
    """Map a failed gRPC call (sync or ``grpc.aio``) to the SDK's exception for its status.

    Args:
        error: What grpc raised.

    Returns:
        The typed error, with the status name in ``code`` and the server's details kept verbatim.

    Example:
        >>> import grpc
        >>> from edgefleet.client.errors import from_rpc_error
        >>> err = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, None, None, details="queue full")
        >>> e = from_rpc_error(err)
        >>> type(e).__name__, e.code, e.details, str(e)
        ('Overloaded', 'RESOURCE_EXHAUSTED', 'queue full', 'RESOURCE_EXHAUSTED: queue full')
    """
    # grpc.RpcError itself declares neither method; every error grpc raises for a call has both.
    code = getattr(error, "code", None)
    status = code() if callable(code) else None
    if not isinstance(status, grpc.StatusCode):
        status = grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    details = (details_of() if callable(details_of) else None) or ""
    message = f"{status.name}: {details}" if details else status.name
    kind = Unavailable if replica_lost(status, details) else _BY_STATUS.get(status, RPCError)
    err = kind(message, status.name, details)
    if isinstance(err, Overloaded):
        trailing = getattr(error, "trailing_metadata", None)
        for key, value in (trailing() if callable(trailing) else None) or ():
            if key == "retry-after-ms" and str(value).isdigit():
                err.retry_after_s = int(value) / 1000
    return err
