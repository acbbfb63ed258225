"""OpenAI-compatible HTTP shapes: request bodies in, ChatCompletion / Completion JSON and SSE out.

Pure conversion; the Gateway owns the routes. edgefleet extensions ride along: request fields
``deadline_ms``, ``route`` and ``site``; an ``edgefleet`` object in responses (served_by, timings,
sla_met). Errors use OpenAI's ``{"error": {...}}`` body with 400/401/429/503.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.serve.requests import MAX_NEW_TOKENS_LIMIT, MIN_TEMPERATURE, RequestError


class _Body(BaseModel):
    """The schema states every rule it can (schemathesis holds the server to it); the rest, such as a
    prompt longer than the model's context, are the Gateway's and the engine's, answered with 400 too."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (n=1, user, ...)

    model: str = "edgefleet"
    max_tokens: int | None = Field(default=None, ge=0, le=MAX_NEW_TOKENS_LIMIT, description="0 or null: the default")
    max_completion_tokens: int | None = Field(default=None, ge=0, le=MAX_NEW_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0, description=f"0: greedy; else at least {MIN_TEMPERATURE}")
    top_p: float | None = Field(default=None, ge=0, le=1, description="0 or null: 1")
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    stop: Annotated[str, Field(max_length=256)] | list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None, max_length=8
    )
    stream: bool = False
    # edgefleet extensions
    deadline_ms: int | None = Field(default=None, ge=0, description="0 or null: the server's default")
    route: Literal["auto", "edge", "cloud"] = "auto"
    site: str = ""
    mode: Literal["default", "best_effort", "strict"] = "default"

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatBody(_Body):
    messages: list[ChatMessageIn] = Field(min_length=1)


class CompletionBody(_Body):
    prompt: str = Field(min_length=1, pattern=r"\S", description="must hold a non-blank character")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorBody(BaseModel):
    """OpenAI's error shape; ``code`` is the gRPC status name in lower case (``invalid_argument``)."""

    error: ErrorDetail


# One server-sent event: `data` holds a JSON chunk (ChatCompletionChunk / text_completion), or [DONE].
_SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
# Documented on every generating route, so the OpenAPI schema lists what the API really answers
# (schemathesis holds the server to it: tests/integration/test_http_schema.py).
DOCUMENTED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the completion; with `stream: true`, server-sent events ending in `data: [DONE]`",
        "content": {"text/event-stream": {"schema": _SSE_EVENT}},
    },
    400: {"model": ErrorBody, "description": "invalid request: the message and `param` name the field"},
    401: {"model": ErrorBody, "description": "missing or unknown bearer token"},
    429: {"model": ErrorBody, "description": "rate limit or capacity exceeded; see Retry-After"},
    503: {"model": ErrorBody, "description": "no target can serve the request now"},
    504: {"model": ErrorBody, "description": "the deadline passed before the answer was complete"},
}


def error_response(err: RequestError) -> JSONResponse:
    kind = (
        "invalid_request_error"
        if err.http_status == 400
        else "authentication_error"
        if err.http_status == 401
        else "server_error"
    )
    retry_ms = getattr(err, "retry_after_ms", None)  # a rate limit says when to come back
    headers = {"Retry-After": str(max(1, -(-retry_ms // 1000)))} if retry_ms else None
    return JSONResponse(
        status_code=err.http_status,
        headers=headers,
        content={"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code.name.lower()}},
    )


def _field_path(loc: tuple) -> str:
    """pydantic's ``("body", "messages", 0, "role")`` as the gRPC side names it: ``messages[0].role``."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def install(app: FastAPI) -> None:
    """Answer malformed JSON bodies with 400 naming the field (FastAPI's default is 422)."""

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = _field_path(first["loc"])
        return JSONResponse(
            status_code=400,
            content={
                "error": {
                    "message": f"{field}: {first['msg']}",
                    "type": "invalid_request_error",
                    "param": field,
                    "code": "invalid_argument",
                }
            },
        )


def _extension(end: dict[str, Any]) -> dict[str, Any]:
    return {
        "served_by": {"tier": end["tier"], "node_id": end["node_id"]},
        "model_version": end["model_version"],
        "timings": {"queue_ms": end["queue_ms"], "ttft_ms": end["ttft_ms"], "total_ms": end["total_ms"]},
        "sla_met": end["sla_met"],
        "route_reason": end["route_reason"],
        "predicted_ms": end["predicted_ms"],
        "network_simulated": end["network_simulated"],
    }


def _usage(end: dict[str, Any]) -> dict[str, int]:
    p, c = end["prompt_tokens"], end["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def full_response(kind: Literal["chat", "text"], rid: str, end: dict[str, Any]) -> dict[str, Any]:
    if kind == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": end["text"]},
            "finish_reason": end["finish_reason"],
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": end["text"], "finish_reason": end["finish_reason"], "logprobs": None}
        obj = "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": end["model"],
        "choices": [choice],
        "usage": _usage(end),
        "edgefleet": _extension(end),
    }


def sse_chunk(
    kind: Literal["chat", "text"],
    rid: str,
    model: str,
    text: str | None,
    finish_reason: str | None = None,
    end: dict[str, Any] | None = None,
) -> str:
    if kind == "chat":
        delta = {} if text is None else {"role": "assistant", "content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        obj = "text_completion"
    body: dict[str, Any] = {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}
    if end is not None:
        body |= {"usage": _usage(end), "edgefleet": _extension(end)}
    return f"data: {json.dumps(body)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
