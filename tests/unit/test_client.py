"""The client SDK against a real in-process gRPC server with a scripted fake LLM (no grpc mocking).

Most tests run the sync and the async client side by side: the twins must behave the same.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgefleet._proto import inference_pb2 as pb
from edgefleet._proto import inference_pb2_grpc
from edgefleet.client import (
    AsyncClient,
    Chunk,
    Client,
    Completion,
    DeadlineExceeded,
    EdgefleetClientError,
    InvalidRequest,
    NotFound,
    Overloaded,
    RPCError,
    Unauthenticated,
    Unavailable,
)
from edgefleet.client._retry import Attempts, RetryPolicy

REPO = Path(__file__).resolve().parents[2]
KINDS = ["sync", "async"]
# Retries in milliseconds, so the retry tests stay fast; correctness never depends on these values.
FAST = {"backoff_base_s": 0.001, "backoff_max_s": 0.005}


# ---- the fake server -------------------------------------------------------------------------------------


@dataclass
class Fault:
    """Abort one attempt with ``code``; for a stream, after ``after_chunks`` chunks were sent."""

    code: grpc.StatusCode
    details: str = ""
    after_chunks: int = 0


@dataclass
class FakeLLM:
    """Echoes the prompt (or the last message) in 3 chunks; the last one is final and carries the summary."""

    faults: list[Fault] = field(default_factory=list)  # consumed one per attempt, then calls succeed
    stall: bool = False  # hold every call until the client's deadline has passed
    summary_text: bool = True  # whether the final chunk's summary repeats the whole text
    requests: list[pb.GenerateRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    time_remaining: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> pb.GenerateResponse:
        fault = self._arrive(request, context)
        if fault is not None:
            context.abort(fault.code, fault.details)
        return summary(request, reply(request))

    def GenerateStream(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> Iterator[pb.GenerateChunk]:
        fault = self._arrive(request, context)
        text = reply(request)
        third = math.ceil(len(text) / 3)
        pieces = [text[:third], text[third : 2 * third], text[2 * third :]]
        for i, piece in enumerate(pieces):
            if fault is not None and i == fault.after_chunks:
                context.abort(fault.code, fault.details)
            final = i == len(pieces) - 1
            done = summary(request, text if self.summary_text else "") if final else None
            yield pb.GenerateChunk(request_id=request.request_id, text=piece, index=i, final=final, summary=done)

    def _arrive(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> Fault | None:
        with self.lock:
            self.requests.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
            self.time_remaining.append(context.time_remaining())
            fault = self.faults.pop(0) if self.faults else None
        give_up = time.monotonic() + 10  # a safety net only; the deadline ends the wait
        while self.stall and context.is_active() and time.monotonic() < give_up:
            time.sleep(0.005)
        return fault


def reply(request: pb.GenerateRequest) -> str:
    return request.prompt or request.messages[-1].content


def summary(request: pb.GenerateRequest, text: str) -> pb.GenerateResponse:
    cloud = request.route == pb.ROUTE_CLOUD
    return pb.GenerateResponse(
        request_id=request.request_id,
        text=text,
        usage=pb.Usage(prompt_tokens=len(reply(request).split()), completion_tokens=3),
        served_by=pb.ServedBy(tier=pb.TIER_CLOUD if cloud else pb.TIER_EDGE, node_id="cloud" if cloud else "edge-1"),
        model_name="smollm2-135m",
        model_version="3",
        timings=pb.Timings(queue_ms=1.5, ttft_ms=4.0, total_ms=9.25),
        sla_met=True,
        finish_reason=pb.FINISH_REASON_STOP,
    )


class Switch(inference_pb2_grpc.InferenceServiceServicer):
    """The servicer a server keeps for the whole module; each test plugs in a fresh FakeLLM."""

    def __init__(self) -> None:
        self.llm = FakeLLM()

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> pb.GenerateResponse:
        return self.llm.Generate(request, context)

    def GenerateStream(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> Iterator[pb.GenerateChunk]:
        return self.llm.GenerateStream(request, context)


@dataclass
class Served:
    switch: Switch
    target: str

    @property
    def llm(self) -> FakeLLM:
        return self.switch.llm


def start_server(credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, Served]:
    switch = Switch()
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(switch, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, Served(switch, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def _server() -> Iterator[Served]:
    server, served = start_server()
    yield served
    server.stop(grace=None)


@pytest.fixture
def fake(_server: Served) -> Served:
    """The module's server, with a fresh fake LLM (empty script and records) for this test."""
    _server.switch.llm = FakeLLM()
    return _server


# ---- calling either twin the same way --------------------------------------------------------------------


def generate(kind: str, target: str, client: dict[str, Any] | None = None, **call: Any) -> Completion:
    if kind == "sync":
        with Client(target, **(client or {})) as c:
            return c.generate(**call)

    async def main() -> Completion:
        async with AsyncClient(target, **(client or {})) as c:
            return await c.generate(**call)

    return asyncio.run(main())


def stream(
    kind: str, target: str, client: dict[str, Any] | None = None, **call: Any
) -> tuple[list[Chunk], EdgefleetClientError | None]:
    """The chunks received, and the error that ended the stream (None if it finished)."""
    chunks: list[Chunk] = []
    if kind == "sync":
        with Client(target, **(client or {})) as c:
            try:
                chunks.extend(c.stream(**call))
            except EdgefleetClientError as e:
                return chunks, e
        return chunks, None

    async def main() -> EdgefleetClientError | None:
        async with AsyncClient(target, **(client or {})) as c:
            try:
                async for chunk in c.stream(**call):
                    chunks.append(chunk)
            except EdgefleetClientError as e:
                return e
        return None

    return chunks, asyncio.run(main())


# ---- unary and streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_generate_returns_a_typed_completion(fake: Served, kind: str):
    done = generate(kind, fake.target, prompt="Hello edge fleet", request_id="req-1")

    assert done == Completion(
        text="Hello edge fleet",
        request_id="req-1",
        tier="edge",
        node_id="edge-1",
        model_name="smollm2-135m",
        model_version="3",
        queue_ms=1.5,
        ttft_ms=4.0,
        total_ms=9.25,
        sla_met=True,
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=3,
    )
    assert done.served_by == "edge/edge-1"


@pytest.mark.parametrize("kind", KINDS)
def test_stream_yields_the_pieces_then_a_final_chunk_with_the_completion(fake: Served, kind: str):
    chunks, error = stream(kind, fake.target, prompt="Hello edge fleet", route="cloud", request_id="req-2")

    assert error is None
    assert [(c.text, c.index, c.final) for c in chunks] == [
        ("Hello ", 0, False),
        ("edge f", 1, False),
        ("leet", 2, True),
    ]
    assert all(c.completion is None for c in chunks[:-1])
    assert chunks[-1].completion == generate(
        kind, fake.target, prompt="Hello edge fleet", route="cloud", request_id="req-2"
    )
    assert chunks[-1].completion.served_by == "cloud/cloud"


@pytest.mark.parametrize("kind", KINDS)
def test_stream_completion_has_the_whole_text_even_if_the_summary_leaves_it_out(fake: Served, kind: str):
    fake.llm.summary_text = False

    chunks, _ = stream(kind, fake.target, prompt="Hello edge fleet")

    assert chunks[-1].completion is not None
    assert chunks[-1].completion.text == "Hello edge fleet"


def test_sync_and_async_send_the_same_request(fake: Served):
    call = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    call |= {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 2**63, "stop": ["\n", "END"]}
    call |= {"timeout": 3.0, "priority": "high", "route": "edge", "site": "site-a", "request_id": "same"}

    sync_done = generate("sync", fake.target, **call)
    async_done = generate("async", fake.target, **call)

    assert sync_done == async_done
    assert sync_done.text == "Hi"
    sent_sync, sent_async = fake.llm.requests
    assert sent_sync == sent_async
    assert [(m.role, m.content) for m in sent_sync.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert (sent_sync.max_new_tokens, sent_sync.top_p, sent_sync.seed) == (7, pytest.approx(0.9), 2**63)
    assert list(sent_sync.stop) == ["\n", "END"]
    assert (sent_sync.priority, sent_sync.route, sent_sync.site) == (pb.PRIORITY_HIGH, pb.ROUTE_EDGE, "site-a")
    assert sent_sync.prompt == ""


@pytest.mark.parametrize("kind", KINDS)
def test_a_request_id_is_generated_when_none_is_given(fake: Served, kind: str):
    first = generate(kind, fake.target, prompt="a")
    second = generate(kind, fake.target, prompt="a")

    ids = [r.request_id for r in fake.llm.requests]
    assert ids == [first.request_id, second.request_id]
    assert ids[0] != ids[1]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)  # uuid4 hex
    assert not fake.llm.requests[0].HasField("seed")  # unset, not 0


# ---- metadata, deadlines, TLS ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_application_and_bearer_token_travel_as_metadata(fake: Served, kind: str):
    generate(kind, fake.target, {"token": "s3cret", "application": "fleet-b"}, prompt="a")
    stream(kind, fake.target, {"token": "s3cret", "application": "fleet-b"}, prompt="a")
    generate(kind, fake.target, prompt="a")

    with_token, streamed, without = fake.llm.metadata
    assert with_token["application"] == streamed["application"] == "fleet-b"
    assert with_token["authorization"] == streamed["authorization"] == "Bearer s3cret"
    assert without["application"] == "edgefleet"
    assert "authorization" not in without


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_is_both_the_grpc_deadline_and_deadline_ms(fake: Served, kind: str):
    generate(kind, fake.target, prompt="a", timeout=2.5)
    stream(kind, fake.target, prompt="a", timeout=2.5)

    assert [r.deadline_ms for r in fake.llm.requests] == [2500, 2500]
    assert all(0 < left < 3.0 for left in fake.llm.time_remaining)  # grpc rounds the timeout up by a few ms


@pytest.mark.parametrize("kind", KINDS)
def test_default_timeout_applies_when_a_call_gives_none(fake: Served, kind: str):
    generate(kind, fake.target, {"default_timeout": 4.0}, prompt="a")
    generate(kind, fake.target, {"default_timeout": 4.0}, prompt="a", timeout=1.0)

    assert [r.deadline_ms for r in fake.llm.requests] == [4000, 1000]
    assert 0 < fake.llm.time_remaining[0] < 4.5  # grpc rounds the timeout up by a few ms
    assert 0 < fake.llm.time_remaining[1] < 1.5


@pytest.mark.parametrize("kind", KINDS)
def test_no_timeout_means_no_deadline_and_the_server_default(fake: Served, kind: str):
    generate(kind, fake.target, prompt="a")

    assert fake.llm.requests[0].deadline_ms == 0
    assert fake.llm.time_remaining[0] > 10**6  # grpc reports "no deadline" as one far in the future


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["generate", "stream"])
def test_a_server_slower_than_the_timeout_raises_deadline_exceeded(fake: Served, kind: str, method: str):
    fake.llm.stall = True

    if method == "generate":
        with pytest.raises(DeadlineExceeded) as info:
            generate(kind, fake.target, prompt="a", timeout=0.2)
        error = info.value
    else:
        chunks, error = stream(kind, fake.target, prompt="a", timeout=0.2)
        assert chunks == []

    assert isinstance(error, DeadlineExceeded)
    assert error.code == "DEADLINE_EXCEEDED"
    assert len(fake.llm.requests) == 1  # a timeout is never retried


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, bytes]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    tmp = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem"), "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )
    cert, key = (tmp / "cert.pem").read_bytes(), (tmp / "key.pem").read_bytes()
    server, served = start_server(grpc.ssl_server_credentials([(key, cert)]))
    yield served, cert
    server.stop(grace=None)


@pytest.mark.parametrize("kind", KINDS)
def test_tls_with_custom_roots_and_a_token(tls_server: tuple[Served, bytes], kind: str):
    served, cert = tls_server
    served.switch.llm = FakeLLM()

    done = generate(kind, served.target, {"tls": True, "root_certificates": cert, "token": "t"}, prompt="secure")

    assert done.text == "secure"
    assert served.llm.metadata[0]["authorization"] == "Bearer t"


@pytest.mark.parametrize("kind", KINDS)
def test_a_plaintext_client_cannot_talk_to_a_tls_server(tls_server: tuple[Served, bytes], kind: str):
    served, _ = tls_server

    with pytest.raises(Unavailable):
        generate(kind, served.target, {"max_retries": 0}, prompt="a")


# ---- error mapping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequest),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, Unauthenticated),
        (grpc.StatusCode.NOT_FOUND, NotFound),  # an unknown answer to rate, or (Serve's proxy) application
        (grpc.StatusCode.INTERNAL, RPCError),
    ],
)
def test_server_statuses_become_typed_errors_and_are_not_retried(
    fake: Served, kind: str, code: grpc.StatusCode, expected: type[EdgefleetClientError]
):
    fake.llm.faults = [Fault(code, "max_new_tokens: must be <= 512")] * 2

    with pytest.raises(expected) as unary:
        generate(kind, fake.target, prompt="a")
    _, streamed = stream(kind, fake.target, prompt="a")

    for error in (unary.value, streamed):
        assert type(error) is expected
        assert not isinstance(error, grpc.RpcError)
        assert error.code == code.name
        assert error.details == "max_new_tokens: must be <= 512"
        assert str(error) == f"{code.name}: max_new_tokens: must be <= 512"
    assert len(fake.llm.requests) == 2  # one attempt each


# ---- retries ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unavailable_twice_then_success_is_retried_with_the_remaining_budget(fake: Served, kind: str):
    fake.llm.faults = [Fault(grpc.StatusCode.UNAVAILABLE, "replica restarting")] * 2

    done = generate(kind, fake.target, FAST, prompt="Hello", timeout=5.0)

    assert done.text == "Hello"
    sent = fake.llm.requests
    assert len(sent) == 3
    assert len({r.request_id for r in sent}) == 1  # the same id, so the server can deduplicate
    deadlines = [r.deadline_ms for r in sent]
    assert deadlines[0] == 5000
    assert 5000 >= deadlines[1] >= deadlines[2] > 0
    assert all(0 < left < 5.5 for left in fake.llm.time_remaining)


@pytest.mark.parametrize("kind", KINDS)
def test_a_crashed_serve_replica_internal_is_retried_like_unavailable(fake: Served, kind: str):
    # What Ray Serve's proxy answers when the Gateway replica serving the call dies (Ray 2.60).
    died = "The actor died unexpectedly before finishing this task.\n\tclass_name: ServeReplica:edgefleet:Gateway"
    fake.llm.faults = [Fault(grpc.StatusCode.INTERNAL, died)]
    done = generate(kind, fake.target, FAST, prompt="Hello", timeout=5.0)
    fake.llm.faults = [Fault(grpc.StatusCode.INTERNAL, "a bug")]
    with pytest.raises(RPCError):  # any other INTERNAL is not retried
        generate(kind, fake.target, FAST, prompt="Hello", timeout=5.0)

    assert done.text == "Hello"
    assert len(fake.llm.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_is_retried_while_nothing_was_received(fake: Served, kind: str):
    fake.llm.faults = [Fault(grpc.StatusCode.UNAVAILABLE, "replica restarting")] * 2

    chunks, error = stream(kind, fake.target, FAST, prompt="Hello")

    assert error is None
    assert "".join(c.text for c in chunks) == "Hello"
    assert len(fake.llm.requests) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_unavailable_after_the_first_chunk_is_raised_not_retried(fake: Served, kind: str):
    fake.llm.faults = [Fault(grpc.StatusCode.UNAVAILABLE, "node lost", after_chunks=1)]

    chunks, error = stream(kind, fake.target, FAST, prompt="Hello edge fleet")

    assert [c.text for c in chunks] == ["Hello "]
    assert isinstance(error, Unavailable)
    assert error.details == "node lost"
    assert "after 1 chunk(s)" in " ".join(error.__notes__)
    assert len(fake.llm.requests) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_retries_stop_at_max_retries(fake: Served, kind: str):
    fake.llm.faults = [Fault(grpc.StatusCode.UNAVAILABLE, "down")] * 10

    with pytest.raises(Unavailable) as info:
        generate(kind, fake.target, FAST | {"max_retries": 2}, prompt="a")

    assert len(fake.llm.requests) == 3
    assert info.value.details == "down"
    assert "gave up after 3 attempt(s)" in info.value.__notes__


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreachable_server_raises_unavailable_after_the_retries(kind: str):
    with pytest.raises(Unavailable) as info:
        generate(kind, f"127.0.0.1:{free_port()}", FAST | {"max_retries": 1}, prompt="a")

    assert info.value.code == "UNAVAILABLE"
    assert "gave up after 2 attempt(s)" in info.value.__notes__


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_the_cap_with_half_of_it_random():
    policy = RetryPolicy(max_retries=5, backoff_base_s=0.1, backoff_max_s=0.3)

    highest = [policy.backoff_s(n, lambda: 1.0) for n in range(4)]
    lowest = [policy.backoff_s(n, lambda: 0.0) for n in range(4)]

    assert highest == pytest.approx([0.1, 0.2, 0.3, 0.3])
    assert lowest == pytest.approx([0.05, 0.1, 0.15, 0.15])


def test_backoff_never_sleeps_past_the_deadline():
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(10, 1.0, 1.0), timeout_s=2.5, clock=clock, rng=lambda: 0.99)
    delays = []

    while (delay := attempts.retry_delay_s(Unavailable("UNAVAILABLE", "UNAVAILABLE"))) is not None:
        delays.append(delay)
        clock.now += delay

    assert len(delays) == 2  # a third sleep would end after the deadline
    assert sum(delays) < 2.5
    assert attempts.remaining_s() == pytest.approx(2.5 - sum(delays))


def test_only_unavailable_is_retried_and_only_before_any_chunk():
    attempts = Attempts(RetryPolicy(3, 0.01, 0.01), timeout_s=None, clock=FakeClock(), rng=lambda: 0.5)

    for error in [DeadlineExceeded("x"), Overloaded("x"), InvalidRequest("x"), Unauthenticated("x"), RPCError("x")]:
        assert attempts.retry_delay_s(error) is None
    assert attempts.retry_delay_s(Unavailable("x"), chunks_received=1) is None
    assert attempts.retry_delay_s(Unavailable("x")) == pytest.approx(0.0075)
    assert attempts.retries == 1


# ---- local validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "named"),
    [
        ({}, "exactly one of prompt and messages"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "a"}]}, "exactly one of prompt and messages"),
        ({"prompt": ""}, "prompt"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 3}]}, "messages[1]"),
        ({"prompt": "a", "route": "fog"}, "route must be one of 'auto', 'edge', 'cloud'"),
        ({"prompt": "a", "priority": "urgent"}, "priority must be one of 'normal', 'low', 'high'"),
        ({"prompt": "a", "timeout": 0}, "timeout"),
        ({"prompt": "a", "timeout": -1.0}, "timeout"),
        ({"prompt": "a", "max_new_tokens": -1}, "max_new_tokens"),
        ({"prompt": "a", "temperature": float("nan")}, "temperature"),
        ({"prompt": "a", "top_p": 1.5}, "top_p"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt": "a", "stop": "END"}, "stop"),
    ],
)
def test_invalid_arguments_fail_locally_naming_the_field(fake: Served, call: dict[str, Any], named: str):
    with Client(fake.target) as c, pytest.raises(InvalidRequest) as info:
        c.generate(**call)

    assert named in str(info.value)
    assert info.value.code is None  # raised by the SDK, not the server
    assert fake.llm.requests == []


def test_every_entry_point_validates_before_sending(fake: Served):
    bad = {"prompt": "a", "route": "fog"}

    async def async_calls() -> None:
        async with AsyncClient(fake.target) as c:
            with pytest.raises(InvalidRequest, match="route"):
                await c.generate(**bad)
            with pytest.raises(InvalidRequest, match="route"):
                c.stream(**bad)  # raised by the call itself, before iterating

    with Client(fake.target) as c:
        with pytest.raises(InvalidRequest, match="route"):
            c.generate(**bad)
        with pytest.raises(InvalidRequest, match="route"):
            c.stream(**bad)
    asyncio.run(async_calls())

    assert fake.llm.requests == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"backoff_base_s": 2.0}, "backoff_max_s"),
        ({"default_timeout": 0}, "default_timeout"),
        ({"root_certificates": b"pem"}, "tls=True"),
        ({"application": ""}, "application"),
    ],
)
@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_bad_constructor_options_raise_value_error(cls: type, options: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        cls("127.0.0.1:9000", **options)


def test_a_token_over_plaintext_warns_unless_the_server_is_local():
    with pytest.warns(UserWarning, match="without TLS"):
        Client("fleet.example.com:9000", token="t").close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for target in ("127.0.0.1:9000", "localhost:9000", "[::1]:9000"):
            Client(target, token="t").close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_closed_client_refuses_calls(fake: Served, kind: str):
    async def closed_async() -> None:
        c = AsyncClient(fake.target)
        await c.close()
        await c.close()  # closing twice is harmless
        await c.generate("a")

    def closed_sync() -> None:
        c = Client(fake.target)
        c.close()
        c.close()
        c.generate("a")

    with pytest.raises(EdgefleetClientError, match="closed"):
        closed_sync() if kind == "sync" else asyncio.run(closed_async())


# ---- packaging: twins and imports ------------------------------------------------------------------------


def public_methods(cls: type) -> dict[str, list[inspect.Parameter]]:
    names = [n for n in vars(cls) if not n.startswith("_") or n == "__init__"]
    return {n: list(inspect.signature(getattr(cls, n)).parameters.values()) for n in names}


def test_the_sync_and_async_clients_are_twins():
    sync_api, async_api = public_methods(Client), public_methods(AsyncClient)

    assert sorted(sync_api) == sorted(async_api) == ["__init__", "close", "feedback", "generate", "stream"]
    assert sync_api == async_api  # names, kinds, defaults and annotations of every parameter
    assert all(inspect.iscoroutinefunction(getattr(AsyncClient, m)) for m in ("generate", "close", "feedback"))
    assert not inspect.iscoroutinefunction(AsyncClient.stream)  # it checks its arguments at once
    assert inspect.signature(Client.generate).parameters == inspect.signature(Client.stream).parameters


def test_importing_the_sdk_loads_neither_ray_nor_torch():
    code = "import edgefleet.client, sys; print('ray' in sys.modules, 'torch' in sys.modules)"

    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)

    assert out.stdout.split() == ["False", "False"]


def test_errors_survive_pickling():
    import pickle

    error = Overloaded("RESOURCE_EXHAUSTED: queue full", "RESOURCE_EXHAUSTED", "queue full")

    copy = pickle.loads(pickle.dumps(error))

    assert (type(copy), copy.message, copy.code, copy.details) == (Overloaded, error.message, error.code, error.details)
