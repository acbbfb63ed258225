"""The routing benchmark's pure half: seeded traces and the oracle that bounds the policies."""

import statistics

import pytest

from bench.routing_sim import TargetModel, edge_capacity_per_s, feasible, finish_times, make_trace, oracle

EDGE = TargetModel("edge-1", "edge", 1.0, 20.0, 0.06, 4, 10.0)
SLOW = TargetModel("edge-2", "edge", 3.0, 70.0, 0.08, 4, 25.0)
CLOUD = TargetModel("cloud", "cloud", 0.2, 8.0, 0.02, 16, 120.0)
FLEET = (EDGE, SLOW, CLOUD)


def gaps(trace):
    return [b.at_s - a.at_s for a, b in zip(trace, trace[1:], strict=False)]


def test_a_trace_has_exactly_its_load_and_the_same_seed_gives_the_same_trace():
    trace = make_trace("poisson", 5.0, 20.0, EDGE, seed=3)

    assert len(trace) == 100 and trace[-1].at_s < 20.0
    assert make_trace("poisson", 5.0, 20.0, EDGE, seed=3) == trace


def test_bursty_arrivals_are_burstier_than_poisson_with_the_same_requests():
    poisson, bursty = (make_trace(a, 20.0, 50.0, EDGE, seed=1) for a in ("poisson", "bursty"))

    cv = {name: statistics.pstdev(gaps(t)) / statistics.mean(gaps(t)) for name, t in (("p", poisson), ("b", bursty))}
    assert cv["b"] > 1.8 > 1.2 > cv["p"] > 0.8, cv
    assert [(r.prompt_tokens, r.new_tokens, r.deadline_ms) for r in poisson] == [
        (r.prompt_tokens, r.new_tokens, r.deadline_ms) for r in bursty
    ]


def test_the_prompt_text_counts_as_its_tokens_for_the_gateway_and_the_synthetic_engine():
    for r in make_trace("poisson", 10.0, 5.0, EDGE, seed=0):
        assert len(r.prompt) // 4 + 8 == r.prompt_tokens


def test_the_oracle_never_admits_a_request_that_would_be_late_and_never_beats_feasibility():
    trace = make_trace("bursty", 12.0, 10.0, EDGE, seed=2)

    result = oracle(trace, FLEET, path_ms=10.0)

    assert result.met <= sum(feasible(r, FLEET, 10.0) for r in trace)
    assert all(ms > 0 for ms in result.latencies_ms)
    # It does at least as well as sending everything to the one fast edge node.
    alone = finish_times(EDGE, trace, 10.0)
    assert result.met >= sum(alone[r.index] <= r.deadline_ms for r in trace)


def test_edge_capacity_counts_full_batches_on_every_node():
    sample = make_trace("poisson", 50.0, 10.0, EDGE, seed=0)

    one, two = edge_capacity_per_s([EDGE], sample), edge_capacity_per_s([EDGE, EDGE], sample)

    assert two == pytest.approx(2 * one, rel=0.1) and edge_capacity_per_s([SLOW], sample) < one
