"""The gRPC front's relay, without Ray: SDK → FrontServer (TLS, size limit) → the SDK tests' fake
InferenceService. What the Gateway would see and answer must be what it sees and answers with no front."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest

from edgefleet.client import Client, Overloaded, Unavailable
from edgefleet.serve.grpc_front import FrontServer, forwarded_metadata, server_credentials
from edgefleet.tls import self_signed
from tests.unit.test_client import FakeLLM, Fault, start_server

LIMIT = 4096  # bytes


@pytest.fixture(scope="module")
def relay(tmp_path_factory) -> Iterator[tuple[str, bytes, object]]:
    """(front address, its certificate, the upstream fake's Served)."""
    server, served = start_server()
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(["127.0.0.1"])
    (folder / "cert.pem").write_bytes(cert)
    (folder / "key.pem").write_bytes(key)
    front = FrontServer(
        "127.0.0.1:0",
        served.target,
        max_request_bytes=LIMIT,
        credentials=server_credentials(folder / "cert.pem", folder / "key.pem"),
    )
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    port = asyncio.run_coroutine_threadsafe(front.start(), loop).result(timeout=10)
    yield f"127.0.0.1:{port}", cert, served
    asyncio.run_coroutine_threadsafe(front.stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    server.stop(grace=None)


@pytest.fixture
def fake(relay):
    relay[2].switch.llm = FakeLLM()
    return relay


def test_metadata_and_the_deadline_reach_the_server_through_the_front(fake):
    target, cert, served = fake
    with Client(target, token="a-token-of-enough-length", tls=True, root_certificates=cert) as client:
        done = client.generate("Hello", timeout=5.0)
        chunks = list(client.stream("Hello front", timeout=5.0))

    assert done.text == "Hello" and "".join(c.text for c in chunks) == "Hello front"
    seen = served.llm.metadata[0]
    assert seen["authorization"] == "Bearer a-token-of-enough-length" and seen["application"] == "edgefleet"
    assert 0 < served.llm.time_remaining[0] <= 5.0  # the caller's deadline, not none and not a fresh one


def test_statuses_and_the_retry_hint_come_back_unchanged(fake):
    target, cert, served = fake
    served.llm.faults = [Fault(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")]
    with Client(target, tls=True, root_certificates=cert, max_retries=0) as client, pytest.raises(Overloaded) as info:
        client.generate("Hello", timeout=5.0)
    assert info.value.details == "queue full"

    served.llm.faults = [Fault(grpc.StatusCode.UNAVAILABLE, "replica restarting")]  # the SDK retries through it
    with Client(target, tls=True, root_certificates=cert, backoff_base_s=0.001, backoff_max_s=0.005) as client:
        assert client.generate("again", timeout=5.0).text == "again"
    assert len(served.llm.requests) == 3


def test_an_oversized_body_never_reaches_the_server(fake):
    target, cert, served = fake
    with Client(target, tls=True, root_certificates=cert, max_retries=0) as client:
        with pytest.raises(Overloaded) as info:
            client.generate("x" * LIMIT, timeout=5.0)
        assert client.generate("small", timeout=5.0).text == "small"

    assert str(LIMIT) in info.value.details
    assert [r.prompt for r in served.llm.requests] == ["small"]


def test_plaintext_is_refused_by_a_tls_front(fake):
    target, _, _ = fake
    with Client(target, max_retries=0) as client, pytest.raises(Unavailable):
        client.generate("Hello", timeout=5.0)


def test_hop_by_hop_metadata_stays_behind():
    kept = forwarded_metadata(
        [
            (":authority", "x"),
            ("user-agent", "grpc-python"),
            ("grpc-accept-encoding", "gzip"),
            ("authorization", "Bearer t"),
            ("application", "edgefleet"),
        ]
    )
    assert kept == [("authorization", "Bearer t"), ("application", "edgefleet")]
