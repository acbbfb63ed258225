"""Everything the sync and async clients share except the I/O: options, request building, conversion.

``Client`` and ``AsyncClient`` are thin loops around these functions, so the two cannot disagree on
what is sent or how the answer reads.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc

from edgefleet._proto import inference_pb2 as pb
from edgefleet.client._retry import Attempts, RetryPolicy
from edgefleet.client.errors import InvalidRequest
from edgefleet.client.types import Chunk, Completion, FinishReasonName, TierName

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_ROUTES = {"auto": pb.ROUTE_AUTO, "edge": pb.ROUTE_EDGE, "cloud": pb.ROUTE_CLOUD}
_PRIORITIES = {"normal": pb.PRIORITY_NORMAL, "low": pb.PRIORITY_LOW, "high": pb.PRIORITY_HIGH}
_MODES = {"default": pb.MODE_DEFAULT, "best_effort": pb.MODE_BEST_EFFORT, "strict": pb.MODE_STRICT}
# Unknown values (a newer server) read as "" rather than failing the call.
_TIERS: dict[int, TierName] = {pb.TIER_EDGE: "edge", pb.TIER_CLOUD: "cloud"}
_FINISH_REASONS: dict[int, FinishReasonName] = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}


@dataclass(frozen=True, slots=True)
class Settings:
    """The client's constructor arguments, checked once (misuse raises ``ValueError``)."""

    target: str
    token: str | None = field(default=None, repr=False)
    tls: bool = False
    root_certificates: bytes | None = field(default=None, repr=False)
    application: str = "edgefleet"
    default_timeout: float | None = None
    channel_options: tuple[tuple[str, Any], ...] = ()
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.target:
            raise ValueError("target must be 'host:port', got ''")
        if not self.application:
            raise ValueError("application must be non-empty: Serve's gRPC proxy routes on it")
        if self.root_certificates is not None and not self.tls:
            raise ValueError("root_certificates is only used with tls=True")
        if self.default_timeout is not None:
            _check_timeout(self.default_timeout, "default_timeout", ValueError)
        if self.token and not self.tls and not _is_loopback(self.target):
            warnings.warn(
                f"sending a bearer token to {self.target} without TLS; pass tls=True", UserWarning, stacklevel=4
            )

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata for every call: Serve's proxy routes on ``application``; the token authenticates."""
        pairs = [("application", self.application)]
        if self.token:
            pairs.append(("authorization", f"Bearer {self.token}"))
        return tuple(pairs)

    @property
    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        return grpc.ssl_channel_credentials(self.root_certificates) if self.tls else None

    def attempts(self, timeout_s: float | None) -> Attempts:
        """Start the retry bookkeeping of one call."""
        return Attempts(self.policy, timeout_s)


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """A validated request and its overall timeout (s, or None for no deadline)."""

    request: pb.GenerateRequest
    timeout_s: float | None

    def for_attempt(self, attempts: Attempts) -> tuple[pb.GenerateRequest, float | None]:
        """The request and gRPC timeout of the next attempt.

        A retry carries only the budget that is left, in both places: Ray Serve does not hand the gRPC
        deadline to the deployment, so ``deadline_ms`` is the SLA the server actually sees.
        """
        if attempts.retries == 0 or self.timeout_s is None:
            return self.request, self.timeout_s
        remaining = attempts.remaining_s() or 0.0
        request = pb.GenerateRequest()
        request.CopyFrom(self.request)
        request.deadline_ms = _deadline_ms(remaining)
        return request, remaining


def prepare_call(
    settings: Settings,
    prompt: str | None,
    *,
    messages: Sequence[dict[str, str]] | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop: Sequence[str] | None,
    timeout: float | None,
    priority: str,
    route: str,
    site: str,
    request_id: str | None,
    mode: str = "default",
) -> PreparedCall:
    """Check the arguments of ``generate``/``stream`` and build the request; raises ``InvalidRequest``."""
    if (prompt is None) == (messages is None):
        raise InvalidRequest("pass exactly one of prompt and messages")
    request = pb.GenerateRequest()
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequest("prompt must be a non-empty str")
        request.prompt = prompt
    else:
        request.messages.extend(_chat_messages(messages))

    request.max_new_tokens = _int_in_range(max_new_tokens, "max_new_tokens", 0, _UINT32_MAX)
    request.temperature = _finite(temperature, "temperature", 0.0, math.inf)
    request.top_p = _finite(top_p, "top_p", 0.0, 1.0)
    if seed is not None:
        request.seed = _int_in_range(seed, "seed", 0, _UINT64_MAX)
    if stop is not None:
        if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
            raise InvalidRequest("stop must be a list of non-empty str")
        request.stop.extend(stop)

    timeout_s = settings.default_timeout if timeout is None else _check_timeout(timeout, "timeout", InvalidRequest)
    # 0 means "server default", so without a timeout the field stays 0.
    request.deadline_ms = 0 if timeout_s is None else _deadline_ms(timeout_s)
    request.priority = _choice(priority, "priority", _PRIORITIES)
    request.route = _choice(route, "route", _ROUTES)
    request.mode = _choice(mode, "mode", _MODES)
    if not isinstance(site, str):
        raise InvalidRequest(f"site must be a str, got {site!r}")
    request.site = site
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest(f"request_id must be a str, got {request_id!r}")
    request.request_id = request_id or uuid.uuid4().hex
    return PreparedCall(request, timeout_s)


def feedback_request(completion: Completion | str, good: bool, correction: str | None) -> pb.FeedbackRequest:
    """Check the arguments of ``feedback`` and build the request; raises ``InvalidRequest``."""
    request_id = completion.request_id if isinstance(completion, Completion) else completion
    if not isinstance(request_id, str) or not request_id:
        raise InvalidRequest(f"feedback needs a Completion or its request_id, got {completion!r}")
    if not isinstance(good, bool):
        raise InvalidRequest(f"good must be True or False, got {good!r}")
    if correction is not None and not isinstance(correction, str):
        raise InvalidRequest(f"correction must be a str, got {correction!r}")
    return pb.FeedbackRequest(
        request_id=request_id, rating=pb.RATING_GOOD if good else pb.RATING_BAD, correction=correction or ""
    )


def to_completion(response: pb.GenerateResponse, *, text: str | None = None) -> Completion:
    """Convert a ``GenerateResponse``; ``text`` stands in when the response's own text is empty."""
    return Completion(
        text=response.text or (text or ""),
        request_id=response.request_id,
        tier=_TIERS.get(response.served_by.tier, ""),
        node_id=response.served_by.node_id,
        model_name=response.model_name,
        model_version=response.model_version,
        queue_ms=response.timings.queue_ms,
        ttft_ms=response.timings.ttft_ms,
        total_ms=response.timings.total_ms,
        sla_met=response.sla_met,
        finish_reason=_FINISH_REASONS.get(response.finish_reason, ""),
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
        route_reason=response.route_reason,
        predicted_ms=response.predicted_ms,
        network_simulated=response.network_simulated,
    )


class StreamAssembler:
    """Turns one attempt's ``GenerateChunk`` messages into ``Chunk`` values, keeping the text so far.

    The final chunk's summary may leave its text empty (the pieces already carried it); the assembled
    text fills in, so ``Chunk.completion.text`` is always the whole text, as from ``generate``.
    """

    def __init__(self) -> None:
        self.received = 0
        self._pieces: list[str] = []

    def add(self, message: pb.GenerateChunk) -> Chunk:
        """Record one message and return it as a ``Chunk``."""
        self.received += 1
        self._pieces.append(message.text)
        completion = None
        if message.final and message.HasField("summary"):
            completion = to_completion(message.summary, text="".join(self._pieces))
        return Chunk(text=message.text, index=message.index, final=message.final, completion=completion)


def _chat_messages(messages: Sequence[dict[str, str]] | None) -> list[pb.ChatMessage]:
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
        raise InvalidRequest("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise InvalidRequest(f"messages[{i}] must be a dict with exactly the keys 'role' and 'content'")
        if not all(isinstance(v, str) for v in m.values()) or not m["role"]:
            raise InvalidRequest(f"messages[{i}]: role must be a non-empty str and content a str")
        out.append(pb.ChatMessage(role=m["role"], content=m["content"]))
    return out


def _int_in_range(value: int, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return value


def _finite(value: float, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be in [{low}, {high}], got {value!r}")
    return float(value)


def _choice(value: str, name: str, allowed: dict[str, int]) -> int:
    if value not in allowed:
        raise InvalidRequest(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return allowed[value]


def _check_timeout(value: float, name: str, error: type[Exception]) -> float:
    # deadline_ms is a uint32: about 49 days is the most the message can carry.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= _UINT32_MAX / 1000:
        raise error(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _deadline_ms(seconds: float) -> int:
    # Never 0 for a real deadline: 0 would tell the server to use its own default instead.
    return max(1, round(seconds * 1000))


def _is_loopback(target: str) -> bool:
    """Whether the target is this machine, where plaintext is acceptable."""
    if target.startswith("unix:"):
        return True
    host = urlsplit("//" + target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")).hostname
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False
