"""The rollout's decision, pure: given the champion, its marks, the canaries and what each node serves,
which swaps, marks and windows come next. The last test plays many interleavings of faults (nodes
restarting or silent, the reconciler dying mid-pass, verdicts either way) against a registry double
and checks the fleet always ends converged."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.serve.convergence import (
    CANARY_SINCE,
    PREVIOUS,
    PROMOTED,
    REJECTED,
    ChampionMarks,
    FleetState,
    Swap,
    decide,
    off_champion,
    served_version,
)

NODES = ("edge-1", "edge-2", "edge-3")
TIMEOUT = 60.0


def fleet(serving, champion=None, *, canaries=("edge-1",), now=1000.0):
    return FleetState(NODES, canaries, champion, serving, now)


def test_with_no_champion_every_node_serves_the_base_model():
    plan = decide(fleet({"edge-1": "3", "edge-2": None, "edge-3": None}), canary_timeout_s=TIMEOUT)

    assert plan.state == "idle" and plan.swaps == (Swap("edge-1", None),)


def test_the_first_champion_goes_to_the_canaries_first_and_its_start_is_marked():
    plan = decide(fleet(dict.fromkeys(NODES), ChampionMarks("1")), canary_timeout_s=TIMEOUT)

    assert plan.state == "canary" and plan.start_canary and not plan.judge
    assert plan.swaps == (Swap("edge-1", "1", canary=True),)  # the rest stay on the base model
    assert plan.desired == {"edge-1": "1", "edge-2": None, "edge-3": None}


def test_once_the_canaries_serve_it_and_the_rest_the_previous_version_the_window_is_judged():
    c = ChampionMarks("2", previous="1", fallback="1", canary_since=990.0)
    plan = decide(fleet({"edge-1": "2", "edge-2": "1", "edge-3": "1"}, c), canary_timeout_s=TIMEOUT)

    assert plan.judge and not plan.swaps and not plan.start_canary


def test_a_rest_node_that_restarted_goes_back_to_the_previous_version_before_the_window():
    c = ChampionMarks("2", previous="1", fallback="1", canary_since=990.0)
    plan = decide(fleet({"edge-1": "2", "edge-2": None, "edge-3": "1"}, c), canary_timeout_s=TIMEOUT)

    assert not plan.judge and plan.swaps == (Swap("edge-2", "1"),)


def test_a_canary_that_restarted_mid_canary_takes_the_version_again():
    c = ChampionMarks("2", previous="1", fallback="1", canary_since=990.0)
    plan = decide(fleet({"edge-1": None, "edge-2": "1", "edge-3": "1"}, c), canary_timeout_s=TIMEOUT)

    assert plan.swaps == (Swap("edge-1", "2", canary=True),) and not plan.judge and not plan.reject


def test_a_canary_that_does_not_answer_is_waited_for_until_the_deadline_then_the_version_is_rejected():
    c = ChampionMarks("2", previous="1", fallback="1", canary_since=990.0)
    silent = {"edge-2": "1", "edge-3": "1"}

    waiting = decide(fleet(silent, c, now=1040.0), canary_timeout_s=TIMEOUT)
    late = decide(fleet(silent, c, now=1051.0), canary_timeout_s=TIMEOUT)

    assert waiting.idle and waiting.state == "canary"
    assert "timed out" in late.reject and "edge-1 not serving it" in late.reject


def test_a_canary_waiting_only_for_the_rest_is_never_rejected_for_it():
    """A two-node fleet with its other node down: the canary serves the version and waits past its
    deadline, because nothing it could be compared with answers; that is not the version's fault."""
    c = ChampionMarks("2", previous="1", fallback="1", canary_since=990.0)
    plan = decide(fleet({"edge-1": "2"}, c, now=5000.0), canary_timeout_s=TIMEOUT)
    assert not plan.reject and not plan.judge and plan.state == "canary"
    assert plan.restart_clock and plan.idle  # its clock restarts while it waits: a later blip is not fatal
    back = decide(fleet({"edge-1": "2", "edge-2": "1", "edge-3": "1"}, c, now=5005.0), canary_timeout_s=TIMEOUT)
    assert back.judge  # the rest answers again: the window runs


def test_a_promoted_champion_goes_everywhere_and_a_node_that_restarted_gets_it_not_the_base_model():
    c = ChampionMarks("2", previous="1", fallback="1", promoted=True)
    plan = decide(fleet({"edge-1": "2", "edge-2": "1", "edge-3": None}, c), canary_timeout_s=TIMEOUT)

    assert plan.state == "promoted" and set(plan.swaps) == {Swap("edge-2", "2"), Swap("edge-3", "2")}


def test_the_rest_falls_back_to_the_last_approved_version_never_to_an_unjudged_one():
    """v3 replaced v2 while v2 was still on canary: v2 never passed a canary, so during v3's canary
    the rest serve v1, the last version the fleet approved, and v3 is judged against v1."""
    c = ChampionMarks("3", previous="2", fallback="1", canary_since=990.0)

    plan = decide(fleet({"edge-1": "3", "edge-2": "2", "edge-3": "1"}, c), canary_timeout_s=TIMEOUT)
    assert plan.desired == {"edge-1": "3", "edge-2": "1", "edge-3": "1"}
    assert plan.swaps == (Swap("edge-2", "1"),) and not plan.judge

    rejected = ChampionMarks("3", previous="2", fallback="1", rejected="canary regressed")
    assert set(decide(fleet({"edge-1": "3"}, rejected), canary_timeout_s=TIMEOUT).desired.values()) == {"1"}


def test_a_node_that_does_not_answer_gets_nothing_until_it_does():
    c = ChampionMarks("2", promoted=True)
    plan = decide(fleet({"edge-1": "2", "edge-2": "2"}, c), canary_timeout_s=TIMEOUT)

    assert plan.idle and plan.desired["edge-3"] == "2"


def test_a_rejected_first_champion_sends_the_canaries_back_to_the_base_model():
    c = ChampionMarks("1", rejected="canary regressed: probe loss")
    plan = decide(fleet({"edge-1": "1", "edge-2": None, "edge-3": None}, c), canary_timeout_s=TIMEOUT)

    assert plan.state == "rolled_back" and plan.swaps == (Swap("edge-1", None),)


def test_after_a_rollback_the_restored_champion_returns_to_the_canaries_without_a_window():
    restored = ChampionMarks("1", promoted=True)  # the alias moved back; v1 had passed its canary
    plan = decide(fleet({"edge-1": "2", "edge-2": "1", "edge-3": "1"}, restored), canary_timeout_s=TIMEOUT)

    assert plan.swaps == (Swap("edge-1", "1"),) and not plan.judge


def test_a_version_every_other_node_already_serves_is_adopted_not_judged_against_itself():
    legacy = ChampionMarks("1")  # e.g. restored by a rollback, but promoted before its canary was marked
    plan = decide(fleet({"edge-1": "2", "edge-2": "1", "edge-3": "1"}, legacy), canary_timeout_s=TIMEOUT)

    assert plan.promote and not plan.judge and plan.swaps == (Swap("edge-1", "1"),)


def test_nodes_off_the_champion_count_the_silent_ones():
    c = ChampionMarks("2", previous="1", fallback="1")

    assert off_champion(fleet({"edge-1": "2", "edge-2": "1"}, c)) == 2
    assert off_champion(fleet(dict.fromkeys(NODES))) == 0  # no champion: the base model is on it


def test_the_served_version_is_read_from_the_adapter_swap_to_registry_names():
    assert served_version("tiny-seed0+adapter:edgefleet-edge-llm-v12", "edgefleet-edge-llm") == "12"
    assert served_version("tiny-seed0", "edgefleet-edge-llm") is None
    assert served_version("tiny-seed0+adapter:other-v1", "edgefleet-edge-llm") == "unregistered adapter other-v1"


def test_marks_are_read_from_the_version_tags():
    tags = {PREVIOUS: "3", PROMOTED: "promoted to all edge nodes: ok", CANARY_SINCE: "12.5"}
    assert ChampionMarks.from_tags("4", tags) == ChampionMarks("4", "3", "3", promoted=True, canary_since=12.5)
    assert ChampionMarks.from_tags("4", {REJECTED: "why", CANARY_SINCE: "junk"}).rejected == "why"
    assert ChampionMarks.from_tags("4", {CANARY_SINCE: "junk"}).canary_since is None


# ---------------------------------------------------------------- interleavings


class World:
    """A registry (alias, tags) and nodes (what each serves), changed the way the reconciler and
    faults change them. ``rollback`` is the registry's: the alias returns to the previous version."""

    def __init__(self) -> None:
        self.champion: str | None = None
        self.tags: dict[str, dict[str, str]] = {}
        self.serving: dict[str, str | None] = dict.fromkeys(NODES)
        self.now = 0.0

    def publish(self, version: str) -> None:
        self.tags[version] = {PREVIOUS: self.champion} if self.champion else {}
        self.champion = version

    def last_approved(self, version: str | None) -> str | None:
        """As ModelRegistry.last_approved: along the previous-champion tags, the first version
        promoted to all nodes and never rejected."""
        while version is not None:
            tags = self.tags[version]
            if tags.get(PROMOTED, "").startswith("promoted") and REJECTED not in tags:
                return version
            version = tags.get(PREVIOUS)
        return None

    def state(self, silent: frozenset[str]) -> FleetState:
        marks = ChampionMarks.from_tags(self.champion, self.tags[self.champion]) if self.champion else None
        if marks is not None:
            marks = replace(marks, fallback=self.last_approved(marks.previous))
        return FleetState(
            NODES, ("edge-1",), marks, {n: v for n, v in self.serving.items() if n not in silent}, self.now
        )

    def reject(self, marks: ChampionMarks, reason: str) -> None:
        self.tags[marks.version][REJECTED] = reason
        if marks.previous:
            self.champion = marks.previous

    def act(self, plan, marks, *, swaps_done: int, verdict: bool | None) -> None:
        """The reconciler's step, cut short after ``swaps_done`` swaps (it died); ``verdict``: the
        window's (None: inconclusive)."""
        if plan.start_canary:
            self.tags[marks.version][CANARY_SINCE] = str(self.now)
        if plan.promote:
            self.tags[marks.version][PROMOTED] = "promoted to all edge nodes"
        if plan.reject:
            return self.reject(marks, plan.reject)
        for swap in plan.swaps[:swaps_done]:
            self.serving[swap.node] = swap.to
        if plan.judge and swaps_done >= len(plan.swaps) and verdict is not None:
            if verdict:
                self.tags[marks.version][PROMOTED] = "promoted to all edge nodes"
            else:
                self.reject(marks, "canary regressed")


fault = st.tuples(
    st.sampled_from(["none", "restart", "silent", "crash", "publish"]),
    st.sampled_from(NODES),
    st.sampled_from([True, False, None]),  # the window's verdict, if one is run
    st.integers(0, 3),  # swaps done before a crash
)


@settings(max_examples=300, deadline=None)
@given(st.lists(fault, min_size=1, max_size=25))
def test_after_any_faults_the_fleet_converges_on_the_champion_or_reverts_a_rejected_one(faults):
    world, versions = World(), iter(str(v) for v in range(1, 100))
    world.publish(next(versions))
    for kind, node, verdict, done in faults:
        world.now += 5
        if kind == "restart":  # a restarted EdgeNode comes back on the config's base model
            world.serving[node] = None
        elif kind == "publish":
            world.publish(next(versions))
        silent = frozenset([node]) if kind == "silent" else frozenset()
        state = world.state(silent)
        plan = decide(state, canary_timeout_s=TIMEOUT)
        world.act(plan, state.champion, swaps_done=done if kind == "crash" else 99, verdict=verdict)

    for _ in range(20):  # the faults stop: passes run undisturbed, every window conclusive
        world.now += 5
        state = world.state(frozenset())
        plan = decide(state, canary_timeout_s=TIMEOUT)
        if plan.idle:
            break
        world.act(plan, state.champion, swaps_done=99, verdict=True)
    else:
        raise AssertionError(f"no convergence: {plan}")

    marks = state.champion
    if marks.rejected:  # a rejected version with nothing to go back to: every node on its fallback
        assert marks.previous is None and set(world.serving.values()) == {marks.fallback}
    else:
        assert set(world.serving.values()) == {marks.version}, (world.serving, marks)


def test_only_errors_that_condemn_the_version_reject_it_at_once_others_are_retried():
    """A canary's load error: a version without an adapter, or gone from the registry, is rejected;
    the registry being unreachable a moment is retried on the next pass (until the deadline)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

    from edgefleet.errors import ModelError
    from edgefleet.serve.reconciler import _definitive

    class RayTaskError(Exception):  # what ray.get raises: the node's exception as its cause
        def __init__(self, cause):
            self.cause = cause

    assert _definitive(ValueError("models:/m/3 holds no peft adapter (adapter_config.json)"))
    assert _definitive(RayTaskError(ModelError("cannot load model")))
    assert _definitive(MlflowException("no version 3", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not _definitive(RayTaskError(ConnectionError("registry refused the connection")))
    assert not _definitive(MlflowException("API request failed", error_code=TEMPORARILY_UNAVAILABLE))
    assert not _definitive(TimeoutError())


def test_the_canary_clock_restarts_whenever_the_canary_is_ready():
    """Ready while a rest node still swaps back (or a window reruns): not the version's fault, so
    one missed poll of the canary later must not find it past its deadline."""
    c = ChampionMarks("2", previous="1", fallback="1", canary_since=1000.0)
    pending = decide(fleet({"edge-1": "2", "edge-2": "1", "edge-3": None}, c, now=1500.0), canary_timeout_s=TIMEOUT)
    judging = decide(fleet({"edge-1": "2", "edge-2": "1", "edge-3": "1"}, c, now=1500.0), canary_timeout_s=TIMEOUT)
    assert pending.restart_clock and pending.swaps == (Swap("edge-3", "1"),)
    assert judging.restart_clock and judging.judge
