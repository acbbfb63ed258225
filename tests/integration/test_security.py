"""Security on the session fleet: per-token rate limits over gRPC and HTTP, and tokens kept out of logs.

A second Serve app ("secure", one tiny edge node) is built the way a Serve config builds it, with a
rate limit of 1 request/s and a burst of 2 per token.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from edgefleet.client import Client, Overloaded, Unauthenticated  # noqa: E402
from tests.conftest import TEST_TOKEN, make_test_config_dict, side_app  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
APP = "secure"
WRONG_TOKEN = "not-the-token-but-long-enough-9d2"


@pytest.fixture(scope="module")
def secure_app(served, tmp_path_factory):
    data = make_test_config_dict(num_edge=1) | {"app": APP}
    data["auth"]["rate_limit"] = {"requests_per_s": 1.0, "burst": 2}
    with side_app(data, tmp_path_factory.mktemp(APP)):
        yield served


def test_a_token_over_its_rate_gets_resource_exhausted_with_a_retry_hint(secure_app):
    with Client(secure_app.grpc_address, token=TEST_TOKEN, application=APP, default_timeout=60) as client:
        time.sleep(2.5)  # a full bucket whatever ran before
        client.generate("hi", max_new_tokens=2)
        client.generate("hi", max_new_tokens=2)  # the burst of 2
        with pytest.raises(Overloaded) as info:
            client.generate("hi", max_new_tokens=2)
        err = info.value
        assert "rate limit of 1 requests/s per token" in err.details
        assert err.retry_after_s is not None and 0 < err.retry_after_s <= 1.0
        time.sleep(err.retry_after_s + 0.05)
        assert client.generate("hi", max_new_tokens=2).completion_tokens > 0  # the hint was honest


def test_http_over_the_rate_is_429_with_retry_after(secure_app):
    url = f"{secure_app.http_url}/{APP}/v1/completions"
    headers = {"Authorization": f"Bearer {TEST_TOKEN}"}
    body = {"model": "edgefleet", "prompt": "hi", "max_tokens": 2}
    time.sleep(2.5)
    answers = [_post(url, body, headers) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429], [text for _, _, text in answers]
    _, headers_429, text = answers[-1]
    assert int(headers_429["Retry-After"]) >= 1
    assert "rate limit" in json.loads(text)["error"]["message"]


def _post(url: str, body: dict, headers: dict) -> tuple[int, object, str]:
    """(status, headers (case-insensitive), body) of a POST, error statuses included."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={**headers, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def test_an_unknown_token_is_refused_before_it_can_spend_anyones_budget(secure_app):
    with Client(secure_app.grpc_address, token=WRONG_TOKEN, application=APP, default_timeout=60) as stranger:
        for _ in range(4):  # more than the burst: still UNAUTHENTICATED, never RESOURCE_EXHAUSTED
            with pytest.raises(Unauthenticated):
                stranger.generate("hi", max_new_tokens=2)


def test_no_log_of_the_fleet_holds_a_token(secure_app, fleet, capfd):
    """Every request above carried a token in its metadata; Serve's access logs, the replicas' logs
    and the driver's output must hold neither the real one nor the wrong one."""
    out, err = capfd.readouterr()
    session = Path(fleet._cluster.head_node.get_session_dir_path())
    leaks = []
    for path in (session / "logs").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaks += [f"{path.name}: {t}" for t in (TEST_TOKEN, WRONG_TOKEN) if t.encode() in data]
    leaks += [f"captured output: {t}" for t in (TEST_TOKEN, WRONG_TOKEN) if t in out + err]
    assert not leaks, leaks
    assert any((session / "logs").rglob("*Gateway*")) or any((session / "logs" / "serve").glob("*"))  # logs exist
