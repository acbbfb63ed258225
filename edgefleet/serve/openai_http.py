"""OpenAI-compatible HTTP shapes: request bodies in, ChatCompletion / Completion JSON and SSE out.

The one mapping of a request's typed result (``serve/events.py``) to HTTP; the Gateway owns the
routes. edgefleet extensions ride along: request fields ``deadline_ms``, ``route`` and ``site``;
an ``edgefleet`` object in responses (served_by, timings, sla_met): at the top level, or in each
choice when a list prompt got several. Errors use OpenAI's ``{"error": {...}}`` body with
400/401/429/503.

What real clients send and the engine cannot do (several choices, tools, JSON mode, logprobs, echo,
images) is refused with 400 naming the field, never silently ignored; fields that do not change
the answer (``user``, ``n: 1``, ``stream_options``, ...) are ignored.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from edgefleet.platform.events import Delta
from edgefleet.serve.events import GenerateResult
from edgefleet.serve.failures import counted_failure
from edgefleet.serve.validation import MAX_NEW_TOKENS_LIMIT, MIN_TEMPERATURE, RequestError, invalid

# The most prompts one /v1/completions request may hold: LangChain's OpenAI LLM sends its prompts in
# lists of `batch_size`, 20 unless set (langchain_openai/llms/base.py, BaseOpenAI.batch_size).
MAX_PROMPTS = 20

# Fields that would change what the answer means, refused with 400 (the schema states the one value
# each accepts, and this reason). The message names the field: clients show it as is.
UNSUPPORTED: dict[str, str] = {
    "n": "one choice per request: n must be 1 or absent",
    "best_of": "one candidate per request: best_of must be 1 or absent",
    "tools": "tool calling is not supported: tools must be empty or absent",
    "functions": "function calling is not supported: functions must be empty or absent",
    "tool_choice": "tool calling is not supported: tool_choice must be 'none', 'auto' or absent",
    "function_call": "function calling is not supported: function_call must be 'none', 'auto' or absent",
    "response_format": 'only plain text is produced: response_format must be {"type": "text"} or absent',
    "logprobs": "log probabilities are not returned: logprobs must be false, 0, null or absent",
    "top_logprobs": "log probabilities are not returned: top_logprobs must be 0 or absent",
    "echo": "the prompt is not echoed: echo must be false or absent",
    "suffix": "insertion is not supported: suffix must be empty or absent",
}


def _refused(name: str, **constraints: Any) -> Any:
    return Field(default=None, description=UNSUPPORTED[name], **constraints)


class _Body(BaseModel):
    """The schema states every rule it can (schemathesis holds the server to it); the rest, such as a
    prompt longer than the model's context, are the Gateway's and the engine's, answered with 400 too."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, seed, ...)

    model: str = "edgefleet"
    max_tokens: int | None = Field(
        default=None,
        ge=0,
        le=MAX_NEW_TOKENS_LIMIT,
        description="0 or null: as many as the model's context leaves after the prompt, "
        "at most the server's ingress.default_max_tokens_cap",
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=0, le=MAX_NEW_TOKENS_LIMIT, description="as max_tokens, and wins over it"
    )
    temperature: float | None = Field(default=None, ge=0, description=f"0: greedy; else at least {MIN_TEMPERATURE}")
    top_p: float | None = Field(default=None, ge=0, le=1, description="0 or null: 1")
    seed: int | None = Field(default=None, ge=0, lt=2**64)
    # At most 8 stops of at most 256 characters each; the count limits the list form only.
    stop: (
        Annotated[str, Field(max_length=256)]
        | Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=8)]
        | None
    ) = None
    stream: bool = False
    n: int | None = _refused("n", ge=1, le=1)
    # edgefleet extensions
    deadline_ms: int | None = Field(default=None, ge=0, description="0 or null: the server's default")
    route: Literal["auto", "edge", "cloud"] = "auto"
    site: str = ""
    mode: Literal["default", "best_effort", "strict"] = "default"

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
}
# Content is checked by chat_messages(), which names the exact part at fault (messages[0].content[1].type);
# pydantic would name a branch of its union instead. The schema still states what is accepted.
_CONTENT = WithJsonSchema(
    {
        "anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}, {"type": "null"}],
        "description": "a string, or text parts (joined with newlines); null only for an assistant message. "
        "Other parts (image_url, input_audio, file, ...) are refused with 400.",
    }
)


class ChatMessageIn(BaseModel):
    role: Literal["system", "developer", "user", "assistant"] = Field(description="developer: as system")
    content: Annotated[Any, _CONTENT] = None


class ResponseFormatText(BaseModel):
    type: Literal["text"]


class ChatBody(_Body):
    messages: list[ChatMessageIn] = Field(min_length=1)
    tools: list[Any] | None = _refused("tools", max_length=0)
    functions: list[Any] | None = _refused("functions", max_length=0)
    tool_choice: Literal["none", "auto"] | None = _refused("tool_choice")
    function_call: Literal["none", "auto"] | None = _refused("function_call")
    response_format: ResponseFormatText | None = _refused("response_format")
    logprobs: Literal[False] | None = _refused("logprobs")
    top_logprobs: int | None = _refused("top_logprobs", ge=0, le=0)


_PROMPT_TEXT = {"type": "string", "minLength": 1, "pattern": r"\S"}
# Checked by prompts(), which names the prompt at fault (prompt[1]) and refuses token ids by name.
_PROMPT = WithJsonSchema(
    {
        "anyOf": [_PROMPT_TEXT, {"type": "array", "items": _PROMPT_TEXT, "minItems": 1, "maxItems": MAX_PROMPTS}],
        "description": f"text holding a non-blank character, or a list of 1 to {MAX_PROMPTS} such texts "
        "(one choice each, in order; not with stream: true). Token ids are refused with 400.",
    }
)


class CompletionBody(_Body):
    prompt: Annotated[Any, _PROMPT]
    best_of: int | None = _refused("best_of", ge=1, le=1)
    echo: Literal[False] | None = _refused("echo")
    suffix: str | None = _refused("suffix", max_length=0)
    logprobs: Literal[False, 0] | None = _refused("logprobs")


def chat_messages(messages: list[ChatMessageIn]) -> list[dict[str, str]]:
    """The messages as the engine takes them: text only, ``developer`` as ``system``.

    Raises:
        RequestError: INVALID_ARGUMENT naming the content or part at fault.
    """
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": _text(m.content, m.role, i)}
        for i, m in enumerate(messages)
    ]


def _text(content: Any, role: str, i: int) -> str:
    where = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if content is None:
        if role == "assistant":  # an earlier turn that only called tools: it said nothing
            return ""
        raise invalid(where, f"must be a string or a list of text parts; null only for assistant, not {role}")
    if not isinstance(content, list):
        raise invalid(where, f"must be a string or a list of text parts, got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise invalid(f"{where}[{j}].type", f"only text parts are supported, got {kind!r}")
        if not isinstance(part.get("text"), str):
            raise invalid(f"{where}[{j}].text", "must be a string")
        texts.append(part["text"])
    return "\n".join(texts)


def prompts(prompt: Any) -> list[str]:
    """A completion request's prompt as a list of texts, one per choice.

    Raises:
        RequestError: INVALID_ARGUMENT naming ``prompt`` or the list item at fault.
    """
    if isinstance(prompt, str):
        return [_prompt_text(prompt, "prompt")]
    if not isinstance(prompt, list) or not prompt:
        raise invalid("prompt", f"must be a string or a list of 1 to {MAX_PROMPTS} strings")
    if any(isinstance(p, int | list) and not isinstance(p, bool) for p in prompt):
        raise invalid("prompt", "token ids are not accepted: send the prompt as text")
    if len(prompt) > MAX_PROMPTS:
        raise invalid("prompt", f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}")
    return [_prompt_text(p, f"prompt[{i}]") for i, p in enumerate(prompt)]


def _prompt_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise invalid(where, f"must be a string, got {type(text).__name__}")
    if not re.search(r"\S", text):  # the schema's pattern
        raise invalid(where, "must hold a non-blank character")
    return text


class FeedbackBody(BaseModel):
    """A user's rating of a completion, by the completion's ``id``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$", description="the completion's id")
    rating: Literal["good", "bad"]
    correction: str | None = Field(default=None, description="the answer it should have been")


class FeedbackStored(BaseModel):
    id: str
    node_id: str = Field(description="the edge node that keeps it")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="unix seconds")
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


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


def body_error(errors: list[dict[str, Any]]) -> RequestError:
    """pydantic's errors about a request body as one INVALID_ARGUMENT naming the first bad field."""
    first = errors[0]
    field = _field_path(first["loc"])
    top = field.split(".", 1)[0].split("[", 1)[0]
    if top in UNSUPPORTED:  # name the field the client set, and why it cannot be honoured
        return invalid(top, UNSUPPORTED[top])
    return invalid(field, first["msg"])


def install(app: FastAPI) -> None:
    """Answer malformed JSON bodies with 400 naming the field (FastAPI's default is 422)."""

    @app.exception_handler(RequestValidationError)
    async def _bad_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(body_error(list(exc.errors())))


def _extension(end: GenerateResult) -> dict[str, Any]:
    return {
        "served_by": {"tier": end.tier, "node_id": end.node_id},
        "model_version": end.model_version,
        "timings": {"queue_ms": end.queue_ms, "ttft_ms": end.ttft_ms, "total_ms": end.total_ms},
        "sla_met": end.sla_met,
        "route_reason": end.route_reason,
        "predicted_ms": end.predicted_ms,
        "network_simulated": end.network_simulated,
    }


def _usage(*ends: GenerateResult) -> dict[str, int]:
    p, c = sum(e.prompt_tokens for e in ends), sum(e.completion_tokens for e in ends)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def full_response(kind: Literal["chat", "text"], rid: str, ends: list[GenerateResult]) -> dict[str, Any]:
    """One choice per result, in order (a list prompt's); usage is their sum."""
    choices: list[dict[str, Any]] = []
    for i, end in enumerate(ends):
        if kind == "chat":
            choice = {
                "index": i,
                "message": {"role": "assistant", "content": end.text},
                "finish_reason": end.finish_reason,
            }
        else:
            choice = {"index": i, "text": end.text, "finish_reason": end.finish_reason, "logprobs": None}
        if len(ends) > 1:  # each prompt was routed on its own: say where each ran
            choice["edgefleet"] = _extension(end)
        choices.append(choice)
    body = {
        "id": rid,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": ends[0].model,
        "choices": choices,
        "usage": _usage(*ends),
    }
    return body | ({"edgefleet": _extension(ends[0])} if len(ends) == 1 else {})


def sse_chunk(
    kind: Literal["chat", "text"],
    rid: str,
    model: str,
    text: str | None,
    finish_reason: str | None = None,
    end: GenerateResult | None = None,
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


async def sse_stream(
    kind: Literal["chat", "text"],
    rid: str,
    model: str,
    first: Delta | GenerateResult,
    events: AsyncIterator[Delta | GenerateResult],
) -> AsyncIterator[str]:
    """A streamed request's body: a chunk per delta, the result's chunk, then ``[DONE]``. A failure
    mid-stream is reported in-band (the status line is gone) and counted like any failed request."""
    async with contextlib.aclosing(events):  # a client gone mid-stream: the request's cleanup now, not at GC
        try:
            event = first
            while isinstance(event, Delta):
                yield sse_chunk(kind, rid, model, event.text)
                event = await anext(events)
            yield sse_chunk(kind, rid, event.model or model, None, event.finish_reason, end=event)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, never a cut stream
            err = counted_failure(exc)
            yield f"data: {json.dumps({'error': {'message': err.message, 'code': err.code.name.lower()}})}\n\n"
        yield SSE_DONE


FEEDBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": FeedbackStored, "description": "stored on the edge node that keeps the answer"},
    400: DOCUMENTED_RESPONSES[400],
    401: DOCUMENTED_RESPONSES[401],
    404: {"model": ErrorBody, "description": "no edge node keeps that answer (unknown or expired id)"},
    429: DOCUMENTED_RESPONSES[429],
}
