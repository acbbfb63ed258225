"""Routing policies are pure: hand-built fleet views in, decisions out. Every branch, plus properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.serve.batch_model import QUIET_GAP_MS
from edgefleet.serve.router import (
    DeadlineInfeasible,
    FleetView,
    Job,
    LeastLoadedRouter,
    NoTargetError,
    PowerOfTwoRouter,
    ResidualTracker,
    RoundRobinRouter,
    RouteRequest,
    ServiceDefaults,
    SlaRouter,
    TargetState,
    TierOnlyRouter,
    make_router,
    predict_ms,
)

GAP = QUIET_GAP_MS  # a request that finds its target idle waits this long for company
FAST = ((1, 10.0), (8, 14.0))  # measured ms per decode step by batch size
SLOW_CLOUD = ((1, 30.0),)


def edge(i: int, **kw) -> TargetState:
    base = {"site": f"site-{i}", "rtt_ms": 5.0 * i, "prefill_ms_per_token": 1.0, "decode_ms_per_step": FAST}
    return TargetState(f"edge-{i}", "edge", **{**base, **kw})


def cloud(**kw) -> TargetState:
    base = {"rtt_ms": 60.0, "prefill_ms_per_token": 0.5, "decode_ms_per_step": ((1, 8.0),), "max_queue": 64}
    return TargetState("cloud", "cloud", **{**base, **kw})


def fleet(*targets: TargetState) -> FleetView:
    return FleetView(tuple(targets))


def calibrated() -> ResidualTracker:
    return ResidualTracker(initial_fraction=0.0)  # no margin until residuals are observed


# ---------------------------------------------------------------- prediction


def test_prediction_is_rtt_plus_prefill_plus_decode_when_idle():
    t = edge(1)  # rtt 5, prefill 1 ms/token, 10 ms/step at batch 1

    assert predict_ms(t, RouteRequest(prompt_tokens=20, max_new_tokens=10)) == pytest.approx(5 + GAP + 20 + 100)


def test_prediction_uses_the_nearest_measured_batch_size_and_defaults_when_unmeasured():
    busy = edge(1, in_flight=7)  # joins a batch of 8 → 14 ms/step, plus waiting for the running one
    unmeasured = TargetState("edge-9", "edge")

    assert step_of(busy) == 14.0
    assert predict_ms(unmeasured, RouteRequest(prompt_tokens=1, max_new_tokens=1)) == pytest.approx(
        GAP + ServiceDefaults().prefill_ms_per_token + ServiceDefaults().decode_ms_per_step
    )


def test_a_request_that_finds_a_long_batch_running_waits_for_all_of_it():
    # One 200-token request dispatched 100 ms ago is running (5 + 1 + 20 + 200 × 10 ms in all).
    running = edge(1, jobs=(Job(age_ms=100, prompt_tokens=20, max_new_tokens=200),), in_flight=1)
    short = RouteRequest(prompt_tokens=20, max_new_tokens=5)

    batch_ends = 5 + GAP + 20 + 201 * 10 - 100  # one step after its last token, from now
    assert predict_ms(running, short) == pytest.approx(batch_ends + 20 + 5 * 10)
    # The older the running job, the sooner its batch ends.
    older = edge(1, jobs=(Job(age_ms=1500, prompt_tokens=20, max_new_tokens=200),), in_flight=1)
    assert predict_ms(older, short) == pytest.approx(batch_ends - 1400 + 20 + 5 * 10)


def test_requests_waiting_together_share_the_next_batch():
    # Two queued behind a running one: the new request joins them in the next batch (max_batch 8).
    jobs = (Job(50, 10, 100), Job(10, 10, 5), Job(5, 10, 5))
    t = edge(1, jobs=jobs, in_flight=3, decode_ms_per_step=((1, 10.0), (3, 12.0)))
    alone_after = edge(1, jobs=jobs[:1], in_flight=1, decode_ms_per_step=((1, 10.0), (3, 12.0)))
    req = RouteRequest(prompt_tokens=10, max_new_tokens=5)

    # Sharing costs 12 ms steps and a 3-row prefill, not another whole batch of waiting.
    assert predict_ms(alone_after, req) < predict_ms(t, req) < predict_ms(alone_after, req) + 5 * 12 + 30 + 10


def test_a_second_cloud_replica_takes_a_batch_the_first_is_too_busy_for():
    full = tuple(Job(0, 10, 100) for _ in range(8))  # one replica's batch of 8
    one, two = cloud(jobs=full, in_flight=8, max_batch=8), cloud(jobs=full, in_flight=8, max_batch=8, servers=2)
    req = RouteRequest(prompt_tokens=10, max_new_tokens=5)

    assert predict_ms(two, req) < predict_ms(one, req)
    assert predict_ms(two, req) == pytest.approx(predict_ms(cloud(), req))


def test_counted_work_beyond_the_known_jobs_is_assumed_the_size_of_the_request():
    known = edge(1, jobs=(Job(0, 10, 50),), in_flight=1)
    with_others = edge(1, jobs=(Job(0, 10, 50),), in_flight=1, queue_depth=9)  # another Gateway's queue
    req = RouteRequest(prompt_tokens=10, max_new_tokens=50)

    assert predict_ms(with_others, req) > predict_ms(known, req)


def step_of(t: TargetState) -> float:
    from edgefleet.serve.router import step_ms

    return step_ms(t, min(t.max_batch, t.load + 1), ServiceDefaults())


@given(
    load=st.integers(0, 64),
    extra=st.integers(1, 32),
    prompt=st.integers(0, 2000),
    new=st.integers(1, 512),
    rtt=st.floats(0, 500),
)
def test_prediction_never_decreases_with_more_work(load, extra, prompt, new, rtt):
    req = RouteRequest(prompt_tokens=prompt, max_new_tokens=new)
    t = edge(1, in_flight=load, rtt_ms=rtt, decode_ms_per_step=((1, 10.0),))

    assert predict_ms(edge(1, in_flight=load + extra, rtt_ms=rtt, decode_ms_per_step=((1, 10.0),)), req) >= predict_ms(
        t, req
    )
    assert predict_ms(t, RouteRequest(prompt_tokens=prompt + extra, max_new_tokens=new)) >= predict_ms(t, req)
    assert predict_ms(t, RouteRequest(prompt_tokens=prompt, max_new_tokens=new + extra)) >= predict_ms(t, req)


# ---------------------------------------------------------------- margins


def test_margin_starts_as_a_fraction_then_is_the_p95_residual():
    tracker = ResidualTracker(min_samples=10, initial_fraction=0.2)
    assert tracker.margin("edge-1", 100.0) == pytest.approx(20.0)

    for residual in range(1, 101):  # actual - predicted = 1..100 ms
        tracker.observe("edge-1", 100.0, 100.0 + residual)

    assert tracker.margin("edge-1", 100.0) == 95.0
    assert tracker.margin("edge-2", 50.0) == pytest.approx(10.0)  # per target


@given(st.lists(st.floats(-1e4, 1e4), min_size=10, max_size=300))
def test_margin_is_never_negative_and_bounded_by_the_worst_residual(residuals):
    tracker = ResidualTracker(min_samples=10)
    for r in residuals:
        tracker.observe("t", 0.0, r)

    margin = tracker.margin("t", 0.0)

    assert 0.0 <= margin <= max(0.0, max(residuals[-tracker.window :]))


def test_margin_state_round_trips():
    a = ResidualTracker()
    for r in range(20):
        a.observe("edge-1", 10.0, 10.0 + r)
    b = ResidualTracker()

    b.load_state_dict(a.state_dict())

    assert b.margin("edge-1", 10.0) == a.margin("edge-1", 10.0)


# ---------------------------------------------------------------- the SLA router, branch by branch


def test_own_site_wins_when_it_meets_the_deadline_even_if_slower():
    view = fleet(edge(1), edge(3), cloud())
    req = RouteRequest(site="site-3", deadline_ms=1000, prompt_tokens=10, max_new_tokens=20)

    decision = SlaRouter(margins=calibrated()).choose(req, view)

    assert decision.target_id == "edge-3" and "own site" in decision.reason
    assert decision.predicted_ms <= 1000 and decision.fallbacks[0] == "edge-1"


def test_busy_own_site_gives_way_to_another_edge_then_to_the_cloud():
    req = RouteRequest(site="site-1", deadline_ms=400, prompt_tokens=10, max_new_tokens=20)
    router = SlaRouter(margins=calibrated())

    other_edge = router.choose(req, fleet(edge(1, queue_depth=16), edge(2), cloud()))
    only_cloud = router.choose(req, fleet(edge(1, queue_depth=16), edge(2, queue_depth=16), cloud()))

    assert other_edge.target_id == "edge-2"
    assert only_cloud.target_id == "cloud" and "(cloud)" in only_cloud.reason


def test_ties_in_cost_break_on_predicted_latency():
    req = RouteRequest(deadline_ms=5000, prompt_tokens=10, max_new_tokens=20)  # no site: all edges cost the same

    decision = SlaRouter(margins=calibrated()).choose(req, fleet(edge(3), edge(1), edge(2), cloud()))

    assert decision.target_id == "edge-1" and decision.fallbacks[:2] == ("edge-2", "edge-3")


def test_cost_order_is_configurable():
    req = RouteRequest(site="site-1", deadline_ms=5000, prompt_tokens=10, max_new_tokens=20)

    decision = SlaRouter(cost_order=["cloud", "edge"], margins=calibrated()).choose(req, fleet(edge(1), cloud()))

    assert decision.target_id == "cloud"


def test_best_effort_takes_the_fastest_when_nothing_fits():
    req = RouteRequest(deadline_ms=50, prompt_tokens=10, max_new_tokens=100, mode="best_effort")

    decision = SlaRouter(margins=calibrated()).choose(req, fleet(edge(1), cloud()))

    assert decision.target_id == "cloud"  # 8 ms/step beats 10 despite the 60 ms RTT
    assert decision.reason.startswith("best effort") and "deadline_ms=50" in decision.reason


def test_strict_is_refused_at_once_naming_the_deadline():
    req = RouteRequest(deadline_ms=50, prompt_tokens=10, max_new_tokens=100, mode="strict")

    with pytest.raises(DeadlineInfeasible, match=r"cannot meet deadline_ms=50"):
        SlaRouter(margins=calibrated()).choose(req, fleet(edge(1), cloud()))


def test_learnt_margin_moves_traffic_off_a_target_that_runs_late():
    router = SlaRouter(margins=ResidualTracker(min_samples=5, initial_fraction=0.0))
    req = RouteRequest(deadline_ms=300, prompt_tokens=10, max_new_tokens=20)  # edge-1 predicts 225 ms
    view = fleet(edge(1), cloud(decode_ms_per_step=((1, 9.0),)))
    assert router.choose(req, view).target_id == "edge-1"

    for _ in range(10):
        router.margins.observe("edge-1", 225.0, 400.0)  # it kept taking 175 ms longer than predicted

    assert router.choose(req, view).target_id == "cloud"


def test_unavailable_targets_are_never_chosen():
    req = RouteRequest(deadline_ms=5000, prompt_tokens=1, max_new_tokens=1)
    view = fleet(edge(1, healthy=False), edge(2, draining=True), edge(3, circuit_open=True), cloud())

    decision = SlaRouter(margins=calibrated()).choose(req, view)

    assert decision.target_id == "cloud" and decision.fallbacks == ()


def test_route_preferences_restrict_the_tier():
    router = SlaRouter(margins=calibrated())
    view = fleet(edge(1), cloud())

    assert router.choose(RouteRequest(route="cloud", deadline_ms=5000), view).target_id == "cloud"
    assert router.choose(RouteRequest(route="edge", deadline_ms=1), view).target_id == "edge-1"  # best effort
    with pytest.raises(NoTargetError, match="no healthy edge target"):
        router.choose(RouteRequest(route="edge"), fleet(edge(1, healthy=False), cloud()))


def test_no_deadline_means_cheapest():
    decision = SlaRouter(margins=calibrated()).choose(RouteRequest(site="site-2"), fleet(edge(1), edge(2), cloud()))

    assert decision.target_id == "edge-2" and "no deadline" in decision.reason


# ---------------------------------------------------------------- baselines


def test_least_loaded_prefers_idle_edges_then_spills_to_cloud():
    router = LeastLoadedRouter()

    assert router.choose(RouteRequest(), fleet(edge(1, queue_depth=3), edge(2), cloud())).target_id == "edge-2"
    full = fleet(edge(1, queue_depth=16), edge(2, queue_depth=20), cloud())
    assert router.choose(RouteRequest(), full).target_id == "cloud"


def test_p2c_takes_the_shorter_queue_of_its_two_samples():
    view = fleet(edge(1, queue_depth=9), edge(2, queue_depth=1))  # only two targets: both always sampled

    picks = {PowerOfTwoRouter(random.Random(s)).choose(RouteRequest(), view).target_id for s in range(20)}

    assert picks == {"edge-2"}


def test_round_robin_cycles():
    router = RoundRobinRouter()
    view = fleet(edge(2), cloud(), edge(1))

    assert [router.choose(RouteRequest(), view).target_id for _ in range(4)] == ["cloud", "edge-1", "edge-2", "cloud"]


def test_tier_only_baselines():
    view = fleet(edge(1, queue_depth=5), edge(2), cloud())

    assert TierOnlyRouter("edge").choose(RouteRequest(), view).target_id == "edge-2"
    assert TierOnlyRouter("cloud").choose(RouteRequest(), view).target_id == "cloud"
    with pytest.raises(NoTargetError):
        TierOnlyRouter("cloud").choose(RouteRequest(), fleet(edge(1)))


def test_make_router_by_name():
    assert isinstance(make_router("sla"), SlaRouter)
    assert isinstance(make_router("p2c", rng=random.Random(1)), PowerOfTwoRouter)
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        make_router("fastest")
