"""What a request carries on the wire besides its body: the caller's bearer token in (gRPC metadata
or the HTTP ``Authorization`` header) and a failed request's status out (gRPC code, details and a
retry hint)."""

from __future__ import annotations

from typing import Any

from edgefleet.serve.validation import RETRY_AFTER_MS, RateLimited, RequestError


def bearer_from_http(authorization: str | None) -> str | None:
    return (authorization or "").removeprefix("Bearer ").strip() or None


def bearer_from_grpc(ctx: Any) -> str | None:
    if ctx is None:
        return None
    for key, value in ctx.invocation_metadata():
        if key.lower() == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


def set_grpc_status(ctx: Any, err: RequestError) -> None:
    if ctx is not None:
        ctx.set_code(err.code)
        ctx.set_details(err.message)
        if isinstance(err, RateLimited):  # machine-readable retry hint; the SDK reads it
            ctx.set_trailing_metadata([(RETRY_AFTER_MS, str(err.retry_after_ms))])
