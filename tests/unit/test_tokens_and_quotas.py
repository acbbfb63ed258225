"""Token hashes in the config, the rate limiter, and the SDK's retry hint. Pure: no Ray."""

from __future__ import annotations

import io

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.cli.main import main
from edgefleet.client.errors import Overloaded, from_rpc_error
from edgefleet.config import parse_config
from edgefleet.errors import ConfigError
from edgefleet.security import digest, hash_token, is_token_hash, matches, new_token
from edgefleet.serve.quotas import RateLimiter
from edgefleet.serve.validation import RateLimited

TOKEN = "a-caller-token-0123456789"


def test_the_config_takes_token_hashes_and_refuses_a_token_without_repeating_it():
    cfg = parse_config({"auth": {"tokens": [hash_token(TOKEN)]}})
    assert cfg.auth.tokens == [digest(TOKEN)] and TOKEN not in cfg.model_dump_json()
    with pytest.raises(ConfigError) as info:
        parse_config({"auth": {"tokens": [TOKEN]}})
    assert "auth.tokens" in str(info.value) and "edgefleet auth hash" in str(info.value)
    assert TOKEN not in str(info.value)  # a pasted token must not end up in a terminal or a log


def test_matching_is_by_digest_and_short_tokens_are_refused():
    hashes = frozenset({digest(TOKEN)})
    assert matches(TOKEN, hashes) and not matches(TOKEN + "x", hashes) and not matches(None, hashes)
    with pytest.raises(ValueError, match="at least"):
        hash_token("short")
    fresh = new_token()
    assert len(fresh) >= 40 and is_token_hash(hash_token(fresh)) and fresh != new_token()


def test_edgefleet_auth_hash_reads_stdin_and_prints_only_the_hash(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN + "\n"))
    assert main(["auth", "hash"]) == 0
    assert capsys.readouterr().out.strip() == digest(TOKEN)
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["auth", "hash"]) == 2  # one line, exit 2, like every expected failure


def test_a_bucket_allows_its_burst_then_its_rate_and_says_when_to_retry():
    limits = RateLimiter(rate=2.0, burst=3)
    assert [limits.take("a", now=0.0) for _ in range(3)] == [None, None, None]
    assert limits.take("a", now=0.0) == pytest.approx(0.5)  # one request every 0.5 s
    assert limits.take("b", now=0.0) is None  # each caller has its own bucket
    assert limits.take("a", now=0.5) is None  # the hint was right
    assert limits.take("a", now=0.5) == pytest.approx(0.5)


@given(st.lists(st.floats(min_value=0, max_value=0.2), min_size=1, max_size=200))
def test_over_any_window_no_caller_exceeds_burst_plus_rate_times_time(gaps):
    limits, now, allowed = RateLimiter(rate=5.0, burst=4), 0.0, 0
    for gap in gaps:
        now += gap
        allowed += limits.take("a", now) is None
    assert allowed <= 4 + 5.0 * now + 1e-9


def test_memory_stays_bounded_however_many_callers():
    limits = RateLimiter(rate=1.0, burst=1, max_callers=100)
    for i in range(1000):
        limits.take(f"caller-{i}", now=float(i))
    assert len(limits._buckets) == 100


def test_the_sdk_reads_the_retry_hint_of_a_rate_limited_call():
    err = RateLimited(rate=2.0, retry_after_s=0.4321)
    assert err.retry_after_ms == 433 and "retry after 433 ms" in err.message and err.http_status == 429
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, RateLimited) and again.retry_after_ms == 433 and again.message == err.message
    trailing = grpc.aio.Metadata(("retry-after-ms", str(err.retry_after_ms)))
    rpc = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), trailing, details=err.message)
    sdk = from_rpc_error(rpc)
    assert isinstance(sdk, Overloaded) and sdk.retry_after_s == pytest.approx(0.433)
    plain = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(), details="queue full"
    )
    assert from_rpc_error(plain).retry_after_s is None


def test_mlflow_credentials_in_the_tracking_uri_are_refused_without_repeating_them():
    secret = "hunter2-mlflow-password"
    with pytest.raises(ConfigError) as info:
        parse_config({"mlflow": {"tracking_uri": f"https://alice:{secret}@mlflow.example:5000"}})

    message = str(info.value)
    assert "mlflow.tracking_uri" in message and "MLFLOW_TRACKING_PASSWORD" in message
    assert secret not in message and "alice" not in message
    assert parse_config({"mlflow": {"tracking_uri": "https://mlflow.example:5000"}})  # no credentials: fine


def test_mlflow_reads_its_credentials_from_the_environment(monkeypatch):
    """The route the docs give: MLflow itself picks them up for every REST call the registry makes."""
    from mlflow.utils.credentials import get_default_host_creds

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-the-environment")

    creds = get_default_host_creds("https://mlflow.example:5000")

    assert (creds.username, creds.password) == ("alice", "from-the-environment")
