"""The gRPC front on the session fleet: TLS with a self-signed certificate through the SDK, and a
request-size limit enforced by the transport.

The front is started the way ``deploy`` starts it (``spawn_front``, on the head node) in front of
the session's Serve proxy: the test config's ``ports.grpc_internal`` is the session's gRPC port.
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from edgefleet.client import Client, Overloaded, Unauthenticated, Unavailable  # noqa: E402
from edgefleet.config import parse_config  # noqa: E402
from tests.conftest import TEST_TOKEN, free_port  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
LIMIT = 64 * 1024  # bytes


@pytest.fixture(scope="module")
def front(served, fleet_config, tmp_path_factory):
    from edgefleet.serve.grpc_front import spawn_front
    from edgefleet.tls import self_signed

    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(["localhost", "127.0.0.1"])
    (folder / "cert.pem").write_bytes(cert)
    (folder / "key.pem").write_bytes(key)
    data = fleet_config.model_dump(mode="json")
    data["ports"] |= {"grpc": free_port(), "grpc_internal": fleet_config.ports.grpc}
    data["auth"] |= {"tls_cert": str(folder / "cert.pem"), "tls_key": str(folder / "key.pem")}
    data["ingress"] = {"max_request_bytes": LIMIT}
    cfg = parse_config(data, source="tls test")
    actor = spawn_front(cfg)
    yield f"127.0.0.1:{cfg.ports.grpc}", cert
    ray.get(actor.stop.remote())
    ray.kill(actor)


def test_the_sdk_talks_tls_to_the_front_and_gets_a_streamed_answer(front):
    target, cert = front
    with Client(target, token=TEST_TOKEN, tls=True, root_certificates=cert, default_timeout=60) as client:
        answer = client.generate("Hello over TLS", max_new_tokens=8)
        chunks = list(client.stream("Stream over TLS", max_new_tokens=8, site="edge-2"))

    assert answer.completion_tokens > 0 and answer.node_id
    assert chunks[-1].final and chunks[-1].completion.text == "".join(c.text for c in chunks)


def test_plaintext_and_untrusted_certificates_are_refused(front):
    from edgefleet.tls import self_signed

    target, _ = front
    other, _ = self_signed(["localhost", "127.0.0.1"])
    with Client(target, token=TEST_TOKEN, max_retries=0) as plain, pytest.raises(Unavailable):
        plain.generate("no TLS", max_new_tokens=2, timeout=10)
    with (
        Client(target, token=TEST_TOKEN, tls=True, root_certificates=other, max_retries=0) as wrong,
        pytest.raises(Unavailable),
    ):
        wrong.generate("wrong root", max_new_tokens=2, timeout=10)


def test_the_gateways_status_comes_back_through_the_front_unchanged(front):
    target, cert = front
    with Client(target, token="not-a-token-the-fleet-knows-9c1", tls=True, root_certificates=cert) as stranger:
        with pytest.raises(Unauthenticated) as info:
            stranger.generate("hi", max_new_tokens=2, timeout=30)
    assert "token" in info.value.details.lower()


def test_an_oversized_request_is_refused_at_the_transport_and_the_front_keeps_serving(front):
    target, cert = front
    with Client(target, token=TEST_TOKEN, tls=True, root_certificates=cert, default_timeout=60) as client:
        with pytest.raises(Overloaded) as info:
            client.generate("x" * (LIMIT + 1), max_new_tokens=2)
        after = client.generate("still there?", max_new_tokens=4)

    assert info.value.code == "RESOURCE_EXHAUSTED" and str(LIMIT) in info.value.details
    assert after.completion_tokens > 0


def test_the_cli_generates_over_tls_with_the_certificate_as_its_root(front, tmp_path):
    import os
    import subprocess
    import sys

    target, cert = front
    (tmp_path / "cert.pem").write_bytes(cert)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "generate",
            "Hello CLI",
            "--target",
            target,
            "--ca",
            str(tmp_path / "cert.pem"),
            "--max-new-tokens",
            "6",
            "--timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EDGEFLEET_TOKEN": TEST_TOKEN},
    )

    assert done.returncode == 0, done.stderr[-500:]
    assert "SLA" in done.stderr and done.stdout.strip()
