"""How a failed request leaves: one status, and one count in the request metrics by outcome and reason."""

from __future__ import annotations

import grpc

from edgefleet import metrics
from edgefleet.serve.validation import RateLimited, RequestError

# Codes that mean "refused" (the request, its caller or the fleet's capacity), not "broke".
_REJECTED = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_argument",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.PERMISSION_DENIED: "permission_denied",
    grpc.StatusCode.UNAVAILABLE: "no_target",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "overloaded",
}


def as_request_error(exc: Exception) -> RequestError:
    if isinstance(exc, RequestError):
        return exc
    return RequestError(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def broken(err: RequestError) -> RequestError:
    err.broken = True  # the fleet failed an accepted request: an error, not a refusal
    return err


def for_item(err: RequestError, item: int | None) -> RequestError:
    """An error about one prompt of a list names that prompt (``prompt[1]``), not the whole field."""
    if item is None or err.param != "prompt":
        return err
    return RequestError(err.code, f"prompt[{item}]{err.message.removeprefix('prompt')}", f"prompt[{item}]")


def counted_failure(exc: Exception) -> RequestError:
    """The status a failed request leaves with, counted in the request metrics by outcome and reason."""
    err = as_request_error(exc)
    if err.code in _REJECTED and not getattr(err, "broken", False):
        infeasible = err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.param == "deadline_ms"
        reason = (
            "deadline_infeasible"
            if infeasible
            else "rate_limited"
            if isinstance(err, RateLimited)
            else _REJECTED[err.code]
        )
        metrics.request_failed("rejected", reason)
    else:
        metrics.request_failed("error")
    return err
