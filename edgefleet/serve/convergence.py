"""What each edge node should serve, and the next steps to get there: the rollout's decision, pure.

The desired state is the registry's ``@champion`` alias with the config's canary nodes. Given it,
the marks on the champion version (tags an earlier pass wrote) and what each node says it serves,
:func:`decide` returns one pass's actions. Nothing is remembered between passes, so a restarted
reconciler picks a half-done rollout up where the registry and the nodes show it stands.

For a champion C whose fallback is P (the newest version before it that the fleet approved,
following its ``previous_champion`` tags; without one, the base model: a version whose own canary
never finished is never what the fleet falls back to):

- C *promoted* (its canary passed): every node serves C.
- C *rejected* while still the champion (there was no P to move the alias back to): every node
  serves P, i.e. the base model.
- otherwise C is *on canary*: the canaries serve C, the rest P. Once they do, the canary window is
  judged. If every node outside the canaries already serves C there is nothing to compare it with,
  and C is adopted. A canary not serving C within ``canary_timeout_s`` of its start
  (``canary_since``) is rejected as timed out; a canary waiting only for the rest (down, or not
  yet back on P) waits, since that is not C's fault.

A node that did not answer gets no action; it is converged when it answers again, whatever it
came back serving (the base model, after a restart).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# Version tags, the rollout's memory (named where the registry writes the others)
from edgefleet.mlflow.registry import CANARY_SINCE_TAG as CANARY_SINCE
from edgefleet.mlflow.registry import PREVIOUS_TAG as PREVIOUS
from edgefleet.mlflow.registry import ROLLED_BACK_TAG as REJECTED
from edgefleet.mlflow.registry import ROLLOUT_TAG as PROMOTED

IDLE, CANARY, PROMOTED_STATE, ROLLED_BACK = "idle", "canary", "promoted", "rolled_back"  # metrics.ROLLOUT_STATES


@dataclass(frozen=True)
class ChampionMarks:
    """The champion version and what the registry's tags say of its rollout."""

    version: str
    previous: str | None = None  # the champion it replaced; None: the base model
    # what the rest serves during its canary, and everyone after a rejection: the newest earlier
    # version whose rollout the fleet approved (None: the base model); the reconciler looks it up
    fallback: str | None = None
    promoted: bool = False
    rejected: str | None = None  # why its canary failed
    canary_since: float | None = None

    @classmethod
    def from_tags(cls, version: str, tags: Mapping[str, str]) -> ChampionMarks:
        since = tags.get(CANARY_SINCE)
        try:
            canary_since = float(since) if since else None
        except ValueError:  # a hand-edited tag: the canary starts over
            canary_since = None
        return cls(
            str(version),
            previous=tags.get(PREVIOUS) or None,
            fallback=tags.get(PREVIOUS) or None,
            promoted=tags.get(PROMOTED, "").startswith("promoted"),
            rejected=tags.get(REJECTED) or None,
            canary_since=canary_since,
        )


def champion_marks(registry: Any) -> ChampionMarks | None:
    """The champion's marks as ``registry`` (a ModelRegistry) holds them, with its fallback looked
    up; None without a champion. What the reconciler and ``edgefleet status`` both read."""
    listing = registry.versions()  # one listing per look: the reconciler looks every few seconds
    version = next((v["version"] for v in listing if "champion" in v["aliases"]), None)
    if version is None:
        return None
    tags_of = {v["version"]: v["tags"] for v in listing}
    marks = ChampionMarks.from_tags(version, tags_of[version])
    return replace(marks, fallback=registry.last_approved(marks.previous, tags_of=tags_of))


@dataclass(frozen=True)
class FleetState:
    """One look at the fleet: every configured node, the canaries, the champion and what answered."""

    nodes: tuple[str, ...]
    canaries: tuple[str, ...]
    champion: ChampionMarks | None
    serving: Mapping[str, str | None]  # node → registry version it serves (None: the base model); absent: no answer
    now: float  # unix seconds

    @property
    def rest(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if n not in self.canaries)


@dataclass(frozen=True)
class Swap:
    node: str
    to: str | None  # a registry version; None: the config's base model
    canary: bool = False  # the canary taking the version on trial: failing to load it rejects the version


@dataclass(frozen=True)
class Plan:
    state: str  # the rollout's state, as metrics.ROLLOUT_STATES names it
    desired: Mapping[str, str | None]  # every node → what it should serve now
    swaps: tuple[Swap, ...] = ()
    start_canary: bool = False  # mark the champion's canary as begun (its deadline counts from now)
    restart_clock: bool = False  # the same mark, renewed while the canary waits on the rest (not an action)
    judge: bool = False  # the canaries and the rest are ready: run the canary window and judge it
    promote: str = ""  # mark the champion promoted without a window, for this reason
    reject: str = ""  # mark the champion rejected, for this reason
    notes: tuple[str, ...] = field(default=())

    @property
    def idle(self) -> bool:
        """Nothing to do: the fleet is where it should be, or waits on nodes that do not answer."""
        return not (self.swaps or self.start_canary or self.judge or self.promote or self.reject)


def served_version(model_version: str, model_name: str) -> str | None:
    """The registry version a node's ``model_version`` names (``...+adapter:<model>-v<N>``, as
    ``swap_to_registry`` names the adapter); None for the base model, the adapter's name for an
    adapter of no version of ``model_name`` (never equal to a version, so it is swapped away)."""
    _, sep, adapter = model_version.partition("+adapter:")
    if not sep:
        return None
    number = adapter.removeprefix(f"{model_name}-v")
    return number if number != adapter and number.isdigit() else f"unregistered adapter {adapter}"


def off_champion(state: FleetState) -> int:
    """Nodes not serving the champion version (a node that did not answer counts as off)."""
    champion = state.champion.version if state.champion else None
    return sum(1 for n in state.nodes if n not in state.serving or state.serving[n] != champion)


def decide(state: FleetState, *, canary_timeout_s: float) -> Plan:
    """One pass's actions toward what ``state`` says the fleet should serve."""
    c = state.champion
    if c is None:
        return _converge(IDLE, dict.fromkeys(state.nodes), state)
    if c.rejected is not None:
        return _converge(ROLLED_BACK, dict.fromkeys(state.nodes, c.fallback), state)
    if c.promoted:
        return _converge(PROMOTED_STATE, dict.fromkeys(state.nodes, c.version), state)
    rest = state.rest
    if rest and all(state.serving.get(n, _NO_ANSWER) == c.version for n in rest):
        plan = _converge(PROMOTED_STATE, dict.fromkeys(state.nodes, c.version), state)
        why = f"every edge node outside the canaries ({', '.join(rest)}) already serves it: nothing to compare with"
        return Plan(plan.state, plan.desired, plan.swaps, promote=why)
    desired = {n: c.version if n in state.canaries else c.fallback for n in state.nodes}
    swaps = _swaps(desired, state, on_trial=c.version)
    canaries_ready = all(state.serving.get(n, _NO_ANSWER) == c.version for n in state.canaries)
    compared = [n for n in rest if state.serving.get(n, _NO_ANSWER) == c.fallback]
    # The deadline measures the canary's own delay: while it serves the version, its clock
    # restarts each pass (the rest swapping back, or a window rerun, is not the version's fault).
    restart = canaries_ready and c.canary_since is not None
    if canaries_ready and compared and not swaps:
        return Plan(CANARY, desired, judge=True, start_canary=c.canary_since is None, restart_clock=restart)
    waiting = [n for n in state.canaries if state.serving.get(n, _NO_ANSWER) != c.version]
    if waiting and c.canary_since is not None and state.now > c.canary_since + canary_timeout_s:
        # the canary's own failure to take the version; the rest being down or slow to swap back
        # is not the version's fault and never rejects it (the canary waits for them instead)
        why = (
            f"the canary was not ready within {canary_timeout_s:.0f} s ({', '.join(waiting)} not serving it): timed out"
        )
        return Plan(CANARY, desired, reject=why)
    notes = ("waiting for a node outside the canaries to compare with",) if canaries_ready and not compared else ()
    return Plan(CANARY, desired, swaps, start_canary=c.canary_since is None, restart_clock=restart, notes=notes)


_NO_ANSWER = object()  # what a node that did not answer serves, equal to no version


def _converge(rollout_state: str, desired: dict[str, str | None], state: FleetState) -> Plan:
    return Plan(rollout_state, desired, _swaps(desired, state, on_trial=None))


def _swaps(desired: Mapping[str, str | None], state: FleetState, *, on_trial: str | None) -> tuple[Swap, ...]:
    return tuple(
        Swap(n, desired[n], canary=on_trial is not None and n in state.canaries and desired[n] == on_trial)
        for n in state.nodes
        if n in state.serving and state.serving[n] != desired[n]
    )


def describe(version: str | None) -> str:
    """How a served or desired version reads in a table or a message."""
    if version is None:
        return "base model"
    return f"v{version}" if version.isdigit() else version
