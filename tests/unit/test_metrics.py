"""edgefleet/metrics.py's recording functions: what each event records, under which names, in which unit.

Ray's metric objects are replaced by fakes that keep what they were given: no Ray, no exporter.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgefleet import metrics


class Fake:
    def __init__(self, name: str) -> None:
        self.name, self.calls = name, []

    def inc(self, value, tags):
        self.calls.append((value, tags))

    observe = set = inc


class Recorded(dict):
    """name -> the Fake metric object the code recorded into."""

    def values_of(self, name: str) -> list[float]:
        return [v for v, _ in self[name].calls] if name in self else []

    def tags_of(self, name: str) -> list[dict[str, str]]:
        return [t for _, t in self[name].calls] if name in self else []


@pytest.fixture
def recorded(monkeypatch) -> Recorded:
    made = Recorded()
    monkeypatch.setattr(metrics, "_metric", lambda name: made.setdefault(name, Fake(name)))
    monkeypatch.setattr(metrics, "_broken", set())
    return made


END = SimpleNamespace(  # the fields of a GenerateResult that the metrics read
    tier="edge",
    node_id="edge-1",
    sla_met=True,
    predicted_ms=300.0,
    total_ms=500.0,
    ttft_ms=120.0,
    prompt_tokens=21,
    completion_tokens=8,
)


def test_a_served_request_records_seconds_and_the_deprecated_milliseconds_beside_them(recorded):
    metrics.request_served(END, deadline_ms=1000)

    assert recorded.values_of("edgefleet_ttft_seconds") == [pytest.approx(0.12)]
    assert recorded.values_of("edgefleet_ttft_ms") == [pytest.approx(120.0)]
    assert recorded.values_of("edgefleet_latency_seconds") == [pytest.approx(0.5)]
    assert recorded.values_of("edgefleet_latency_ms") == [pytest.approx(500.0)]
    assert recorded.values_of("edgefleet_prediction_error_seconds") == [pytest.approx(0.2)]
    assert recorded.values_of("edgefleet_prediction_error_ms") == [pytest.approx(200.0)]
    assert recorded.values_of("edgefleet_prompt_tokens") == [21]
    assert recorded.values_of("edgefleet_generation_tokens") == [8]
    assert recorded.values_of("edgefleet_generated_tokens") == [8]
    assert recorded.values_of("edgefleet_inter_token_latency_seconds") == []  # unary: no chunks


def test_every_deprecated_metric_is_recorded_whenever_its_replacement_is(recorded):
    metrics.request_served(END, deadline_ms=1000)
    for m in metrics.DEPRECATED:
        assert len(recorded.values_of(m.name)) == len(recorded.values_of(m.replaced_by)) > 0, m.name


def test_labels_are_the_same_per_node_and_tier_for_every_request_metric(recorded):
    clock = metrics.TokenClock()
    for t, tokens in ((0.0, 1), (0.01, 2)):
        clock.chunk(tokens, now=t)
    metrics.request_served(END, deadline_ms=0, clock=clock)
    where = {"tier": "edge", "node": "edge-1"}
    for name in (
        "edgefleet_ttft_seconds",
        "edgefleet_latency_seconds",
        "edgefleet_inter_token_latency_seconds",
        "edgefleet_prompt_tokens",
        "edgefleet_generation_tokens",
    ):
        assert recorded.tags_of(name) and all(tags == where for tags in recorded.tags_of(name)), name
    assert recorded.values_of("edgefleet_inter_token_latency_seconds") == pytest.approx([0.01])


def test_inter_token_latency_splits_a_chunk_over_the_tokens_it_brought():
    clock = metrics.TokenClock()
    for now, tokens in ((1.00, 1), (1.02, 2), (1.08, 5), (1.09, 5), (1.10, 6)):
        clock.chunk(tokens, now=now)
    # the first chunk is TTFT; 0.02 s for one token, 0.06 s for three, the same count (held-back text) none and
    # the next token is timed from the last chunk that brought one
    assert clock.per_token() == pytest.approx([0.02, 0.02, 0.02, 0.02, 0.02])


def test_inter_token_latency_after_a_failover_counts_the_new_targets_tokens_from_zero():
    clock = metrics.TokenClock()
    for now, tokens in ((0.0, 1), (0.1, 2), (0.5, 2), (0.7, 1)):  # edge-2 died after 2 tokens...
        clock.chunk(tokens, now=now)
    # ...0.5 s of held-back text (skipped), then the next target's first token 0.6 s after the last one
    assert clock.per_token() == pytest.approx([0.1, 0.6])


def test_inter_token_latency_takes_a_chunk_without_a_count_as_one_token():
    clock = metrics.TokenClock()
    for now in (0.0, 0.05, 0.15):
        clock.chunk(None, now=now)
    assert clock.per_token() == pytest.approx([0.05, 0.1])


def test_a_failed_request_counts_once_with_tier_none(recorded):
    metrics.request_failed("rejected", "invalid_argument")
    metrics.request_failed("cancelled")

    assert [tags["outcome"] for tags in recorded.tags_of("edgefleet_requests")] == ["rejected", "cancelled"]
    assert recorded.values_of("edgefleet_rejections") == [1.0]
    assert recorded.values_of("edgefleet_generation_tokens") == []


def test_outside_ray_recording_is_a_no_op():
    metrics.request_served(END, deadline_ms=1000, clock=metrics.TokenClock())  # ray not initialised: nothing raises


def test_a_gauge_is_set_again_while_the_process_lives(recorded, monkeypatch):
    # Ray drops a gauge's value two export intervals after its last set: a round's gauges, set once,
    # were visible for ~2 s. The process keeps setting what it holds.
    import time

    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # outside Ray nothing is held
    monkeypatch.setattr(metrics, "KEEP_PERIOD_S", 0.05)
    monkeypatch.setattr(metrics, "_held", {})
    metrics.round_committed("r", 3, 12.5, {"edge-1": 1.5}, 8.0)
    metrics.model_serving("edge", "edge-1", "m", "2", previous=("m", "1"))

    deadline = time.monotonic() + 10
    while len(recorded.values_of("edgefleet_model_info")) < 4 and time.monotonic() < deadline:  # 0, then 1 x 3
        time.sleep(0.05)
    assert recorded.values_of("edgefleet_federation_round")[:3] == [3, 3, 3]
    assert set(map(tuple, map(dict.items, recorded.tags_of("edgefleet_epsilon")))) == {
        (("run", "r"), ("client", "edge-1"))
    }
    assert len(recorded.values_of("edgefleet_federation_round_seconds")) == 1  # a histogram is observed once
    # the version a node left is set to 0 once and then ages out; the one it serves is kept at 1
    info = list(zip(recorded.values_of("edgefleet_model_info"), recorded.tags_of("edgefleet_model_info"), strict=True))
    assert [v for v, t in info if t["version"] == "1"] == [0]
    assert [v for v, t in info if t["version"] == "2"][:3] == [1, 1, 1]
