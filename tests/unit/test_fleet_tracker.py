"""The Gateway's fleet bookkeeping is pure: dispatch counts, stats, and the circuit breaker."""

from edgefleet.config import EdgefleetConfig
from edgefleet.platform.stats import EngineStats
from edgefleet.serve.fleet_tracker import BREAKER_FAILURES, FleetTracker, RecentOutcomes
from edgefleet.serve.router import Job


def tracker() -> FleetTracker:
    return FleetTracker(EdgefleetConfig(), {"edge-1": 5.0, "cloud": 60.0})


def test_view_lists_every_edge_and_the_cloud_with_rtt_and_stats():
    t = tracker()
    t.heartbeat(
        "edge-1",
        EngineStats(queue_depth=3, prefill_ms_per_token=1.5, decode_ms_per_step={8: 14.0, 1: 10.0}, model_version="v7"),
    )

    view = {s.target_id: s for s in t.view().targets}

    assert list(view) == ["edge-1", "edge-2", "edge-3", "cloud"]
    assert view["edge-1"].queue_depth == 3 and view["edge-1"].rtt_ms == 5.0 and view["cloud"].rtt_ms == 60.0
    assert view["edge-1"].decode_ms_per_step == ((1, 10.0), (8, 14.0)) and view["edge-1"].model_version == "v7"
    assert view["edge-2"].prefill_ms_per_token is None  # not measured yet: the router uses its defaults


def test_dispatches_count_at_once_so_simultaneous_requests_spread():
    t = tracker()

    t.dispatch("edge-1")
    t.dispatch("edge-1")
    in_flight = {s.target_id: s.in_flight for s in t.view().targets}
    t.finish("edge-1", failed=False)

    assert in_flight["edge-1"] == 2
    assert {s.target_id: s.in_flight for s in t.view().targets}["edge-1"] == 1


def test_consecutive_failures_open_the_breaker_and_a_heartbeat_closes_it():
    t = tracker()
    for _ in range(BREAKER_FAILURES):
        t.dispatch("edge-2")
        t.finish("edge-2", failed=True)
    opened = {s.target_id: s for s in t.view().targets}["edge-2"]

    t.heartbeat("edge-2", EngineStats(queue_depth=0))

    closed = {s.target_id: s for s in t.view().targets}["edge-2"]
    assert opened.circuit_open and not opened.available
    assert not closed.circuit_open and closed.available


def test_a_success_resets_the_failure_count_and_a_missed_heartbeat_marks_unhealthy():
    t = tracker()
    for failed in (True, True, False, True, True):
        t.dispatch("edge-3")
        t.finish("edge-3", failed=failed)
    t.heartbeat("edge-1", None)

    view = {s.target_id: s for s in t.view().targets}
    assert not view["edge-3"].circuit_open  # never three in a row
    assert not view["edge-1"].healthy


def test_stats_of_another_shape_mark_the_node_unhealthy_instead_of_breaking_routing():
    """A node of an older release answers a dict: the view, which the router reads every request,
    must not raise; the node is routed around until it answers EngineStats."""
    t = tracker()
    t.heartbeat("edge-2", {"queue_depth": 0, "model_version": "old"})

    view = {s.target_id: s for s in t.view().targets}
    assert not view["edge-2"].healthy and not view["edge-2"].available
    t.heartbeat("edge-2", EngineStats(queue_depth=1))
    assert {s.target_id: s for s in t.view().targets}["edge-2"].healthy


def test_the_view_carries_each_unfinished_dispatch_with_its_age_and_size():
    t = tracker()
    first = t.dispatch("edge-1", prompt_tokens=30, max_new_tokens=64, now=100.0)
    t.dispatch("edge-1", prompt_tokens=10, max_new_tokens=8, now=100.5)
    t.finish("edge-1", failed=False, job=first)

    state = {s.target_id: s for s in t.view(now=101.0).targets}["edge-1"]

    assert state.jobs == (Job(age_ms=500.0, prompt_tokens=10, max_new_tokens=8),) and state.in_flight == 1


def test_status_is_one_typed_row_per_target_with_its_model_and_recent_answers():
    t = tracker()
    t.heartbeat("edge-1", EngineStats(queue_depth=2, draining=True, model="tiny", model_version="tiny-v1"))
    t.heartbeat("edge-2", None)
    t.dispatch("edge-1")
    recent = RecentOutcomes(window_s=60)
    recent.record("edge-1", 40, True)  # status() reads the window at the present

    rows = {r.target_id: r for r in t.status(recent)}

    assert list(rows) == ["edge-1", "edge-2", "edge-3", "cloud"]
    edge1 = rows["edge-1"]
    assert (edge1.model, edge1.model_version, edge1.queue_depth, edge1.in_flight) == ("tiny", "tiny-v1", 2, 1)
    assert edge1.draining and edge1.recent.requests == 1 and edge1.recent.sla_attainment == 1.0
    assert not rows["edge-2"].healthy and rows["cloud"].tier == "cloud"
    assert rows["edge-3"].model == "" and rows["edge-3"].recent.sla_attainment is None  # not heard from yet
