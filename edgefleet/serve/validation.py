"""Request validation, shared by gRPC and HTTP: bad input gets an error naming the field.

Checks that need the model (prompt longer than the context, max_new_tokens above the model's
limit) happen in the engine, which answers with the same INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

import grpc

from edgefleet._proto import inference_pb2 as pb
from edgefleet.config import MAX_NEW_TOKENS_LIMIT, EdgefleetConfig
from edgefleet.errors import EdgefleetError
from edgefleet.platform.engine import GenRequest
from edgefleet.platform.feedback import Rating

DEFAULT_MAX_NEW_TOKENS = 128  # gRPC's max_new_tokens=0 (the proto documents "server default")
MIN_TEMPERATURE = 0.01  # below this softmax overflows to NaN and the whole batch would fail
ROLES = {"system", "user", "assistant"}
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # a caller's own id: echoed, logged, a feedback key
_ROUTES = {pb.ROUTE_AUTO: "auto", pb.ROUTE_EDGE: "edge", pb.ROUTE_CLOUD: "cloud"}
_PRIORITIES = {pb.PRIORITY_NORMAL: "normal", pb.PRIORITY_LOW: "low", pb.PRIORITY_HIGH: "high"}
_MODES = {pb.MODE_DEFAULT: "default", pb.MODE_BEST_EFFORT: "best_effort", pb.MODE_STRICT: "strict"}
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class RequestError(EdgefleetError):
    """A request that cannot be served, with the gRPC status (and HTTP status) to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param

    def __reduce__(self):  # crosses Ray process boundaries: rebuild with all three fields
        return (RequestError, (self.code, self.message, self.param))

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


RETRY_AFTER_MS = "retry-after-ms"  # gRPC trailing metadata of a rate-limited call (HTTP: Retry-After)


class RateLimited(RequestError):
    """A caller over its rate limit: RESOURCE_EXHAUSTED / 429, with when to come back."""

    def __init__(self, rate: float, retry_after_s: float) -> None:
        self.retry_after_ms = max(1, int(retry_after_s * 1000 + 0.999))
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"rate limit of {rate:g} requests/s per token exceeded; retry after {self.retry_after_ms} ms",
        )

    def __reduce__(self):
        return (_rebuild_rate_limited, (self.message, self.retry_after_ms))


def _rebuild_rate_limited(message: str, retry_after_ms: int) -> RateLimited:
    err = RateLimited.__new__(RateLimited)
    RequestError.__init__(err, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
    err.retry_after_ms = retry_after_ms
    return err


def planned_tokens(max_new_tokens: int, fit_context: bool) -> int:
    """See :attr:`Validated.planned_new_tokens`."""
    return min(max_new_tokens, DEFAULT_MAX_NEW_TOKENS) if fit_context else max_new_tokens


def invalid(param: str, reason: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{param}: {reason}", param)


@dataclass(frozen=True)
class Validated:
    """A request that passed every model-independent check."""

    request_id: str
    messages: list[dict[str, str]]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    deadline_ms: int
    route: str
    site: str
    priority: str = "normal"
    mode: str = "default"  # "default" (the server's routing.mode), "best_effort" or "strict"
    # max_new_tokens is only a cap: the engine lowers it to what the model's context leaves after
    # the prompt instead of refusing (only the engine knows the prompt's length in tokens).
    fit_context: bool = False
    caller: str = "anonymous"  # the token's digest once authenticated: whose answer this is (feedback)

    @property
    def planned_new_tokens(self) -> int:
        """The answer length the router plans the deadline on. An open-ended answer (OpenAI's
        default) is planned at the SDK's default length, not the cap: most answers end at EOS long
        before it, and planning on the cap would send every such request to the fastest target
        instead of the cheapest."""
        return planned_tokens(self.max_new_tokens, self.fit_context)

    def engine_request(self, *, stream: bool = True) -> GenRequest:
        return GenRequest(
            request_id=self.request_id,
            messages=self.messages,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=self.stop,
            stream=stream,
            fit_context=self.fit_context,
        )


def validate(
    *,
    prompt: str | None,
    messages: list[dict[str, Any]] | None,
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    stop: list[str] | None,
    deadline_ms: int | None,
    route: str,
    site: str,
    priority: str,
    request_id: str | None,
    cfg: EdgefleetConfig,
    mode: str = "default",
    fit_context_cap: int | None = None,
) -> Validated:
    """Check one request; raise :class:`RequestError` (INVALID_ARGUMENT) naming the first bad field.

    Without ``max_new_tokens`` a request gets :data:`DEFAULT_MAX_NEW_TOKENS`, or, given
    ``fit_context_cap`` (the OpenAI API's default), as many as the model's context leaves, at most that.
    """
    if len(site or "") > 128 or not (site or "").isprintable():
        raise invalid("site", "must be at most 128 printable characters")
    if request_id and not REQUEST_ID.fullmatch(request_id):
        raise invalid("request_id", "must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    if prompt and messages:
        raise invalid("messages", "set either prompt or messages, not both")
    if messages:
        for i, m in enumerate(messages):
            if m.get("role") not in ROLES:
                raise invalid(f"messages[{i}].role", f"must be one of {sorted(ROLES)}, got {m.get('role')!r}")
            if not isinstance(m.get("content"), str):
                raise invalid(f"messages[{i}].content", "must be a string")
        if not any(m["content"].strip() for m in messages):
            raise invalid("messages", "every message is empty")
        chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    else:
        if not prompt or not prompt.strip():
            raise invalid("prompt", "must not be empty")
        chat = [{"role": "user", "content": prompt}]
    fit_context = not max_new_tokens and fit_context_cap is not None
    n = max_new_tokens or (fit_context_cap if fit_context else DEFAULT_MAX_NEW_TOKENS)
    if not 0 < n <= MAX_NEW_TOKENS_LIMIT:
        raise invalid("max_new_tokens", f"must be in 1..{MAX_NEW_TOKENS_LIMIT}, got {n}")
    t = 0.0 if temperature is None else float(temperature)
    if math.isnan(t) or math.isinf(t) or t < 0 or 0 < t < MIN_TEMPERATURE:
        raise invalid("temperature", f"must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, got {t}")
    if seed is not None and not 0 <= seed < 2**64:
        raise invalid("seed", f"must be in 0..2**64-1, got {seed}")
    p = 1.0 if not top_p else float(top_p)
    if math.isnan(p) or not 0 < p <= 1:
        raise invalid("top_p", f"must be in (0, 1], got {p}")
    d = cfg.routing.default_deadline_ms if not deadline_ms else int(deadline_ms)
    if d < 0:
        raise invalid("deadline_ms", f"must be >= 0, got {d}")
    if route not in ("auto", "edge", "cloud"):
        raise invalid("route", f"must be auto, edge or cloud, got {route!r}")
    if mode not in ("default", "best_effort", "strict"):
        raise invalid("mode", f"must be default, best_effort or strict, got {mode!r}")
    if priority not in ("normal", "low", "high"):
        raise invalid("priority", f"must be normal, low or high, got {priority!r}")
    stops = [s for s in (stop or []) if s]
    if len(stops) > 8:
        raise invalid("stop", f"at most 8 stop sequences, got {len(stops)}")
    if any(len(s) > 256 for s in stops):
        raise invalid("stop", "each stop sequence must be at most 256 characters")
    return Validated(
        request_id=request_id or uuid.uuid4().hex,
        messages=chat,
        max_new_tokens=n,
        temperature=t,
        top_p=p,
        seed=seed,
        stop=stops,
        deadline_ms=d,
        route=route,
        site=site or "",
        priority=priority,
        mode=mode,
        fit_context=fit_context,
    )


def validate_proto(req: pb.GenerateRequest, cfg: EdgefleetConfig) -> Validated:
    from edgefleet.serve.grpc_api import UndecodableRequest

    if isinstance(req, UndecodableRequest):
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, f"request body is not an edgefleet.v1.GenerateRequest: {req.reason}"
        )
    if req.route not in _ROUTES:
        raise invalid("route", f"unknown value {req.route}")
    if req.priority not in _PRIORITIES:
        raise invalid("priority", f"unknown value {req.priority}")
    if req.mode not in _MODES:
        raise invalid("mode", f"unknown value {req.mode}")
    return validate(
        prompt=req.prompt,
        messages=[{"role": m.role, "content": m.content} for m in req.messages],
        max_new_tokens=req.max_new_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed if req.HasField("seed") else None,
        stop=list(req.stop),
        deadline_ms=req.deadline_ms,
        route=_ROUTES[req.route],
        site=req.site,
        priority=_PRIORITIES[req.priority],
        request_id=req.request_id,
        cfg=cfg,
        mode=_MODES[req.mode],
    )


def validate_feedback(request_id: str, good: bool | None, correction: str, cfg: EdgefleetConfig) -> Rating:
    """A rating as the home node stores it.

    Raises:
        RequestError: INVALID_ARGUMENT, naming the field (request_id, rating or correction).
    """
    if not REQUEST_ID.fullmatch(request_id or ""):
        raise invalid("request_id", "must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    if good is None:
        raise invalid("rating", "say good or bad")
    limit = cfg.feedback.max_correction_chars
    if len(correction) > limit:
        raise invalid("correction", f"{len(correction)} characters exceed feedback.max_correction_chars={limit}")
    if correction and not correction.strip():
        raise invalid("correction", "must hold a non-blank character")
    try:
        correction.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid("correction", "is not valid Unicode text (a lone surrogate)") from None
    return Rating(good=good, correction=correction.strip())
