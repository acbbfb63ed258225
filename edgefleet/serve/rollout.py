"""The canary window of a rollout: how canaries and the rest are watched, and the verdict.

The reconciler (:mod:`edgefleet.serve.reconciler`) decides when a new ``champion`` goes to the
*canary* edge nodes and, once they serve it, asks :meth:`RolloutController.observe` to watch them
for the window against the rest (which serve the version it replaced):

- the same probe requests go to both groups, measuring each group's SLA attainment and error rate;
- a chat probe: each served model's loss on reference answers to held-out user questions (the
  answer tokens only, as the promotion gate scores them);
- live feedback: the share of good ratings users gave, during the window, to the new version's
  answers against the old one's (counts only cross from the nodes, never text).

:func:`judge` (pure) turns that into a verdict: promote (the rest swap too) or roll back (the
canaries swap back, ``champion`` returns to the previous version, and the reason is tagged).
Every call to a node has a timeout; a node that dies during the window makes it inconclusive
(:class:`NodeLost`), not a verdict.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.config import EdgefleetConfig
from edgefleet.errors import EdgefleetError
from edgefleet.platform.chat import ChatExample
from edgefleet.platform.engine import GenRequest
from edgefleet.platform.events import Failed
from edgefleet.platform.feedback import Tally


@dataclass(frozen=True)
class GroupHealth:
    """What a group of nodes showed during the window."""

    requests: int
    errors: int
    sla_met: int
    probe_loss: float
    ratings: Tally = Tally()  # users' ratings of this group's model version, during the window

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def attainment(self) -> float:
        return self.sla_met / self.requests if self.requests else 1.0

    @property
    def good_share(self) -> float:
        return self.ratings.good / self.ratings.total if self.ratings.total else float("nan")


@dataclass(frozen=True)
class RolloutLimits:
    max_error_rate_increase: float = 0.05  # canary error rate may exceed the rest's by this much
    max_attainment_drop: float = 0.10  # canary SLA attainment may trail the rest's by this much
    # ... unless a drop that large is likely chance: a window has tens of requests, and 2 late
    # of 11 against 0 of 22 (p = 0.10) rejected a sound version in a demo
    attainment_alpha: float = 0.05
    max_attainment_drop_any: float = 0.5  # a drop this large counts however few the requests
    max_probe_loss_increase: float = 0.05  # nats per token on the probe set
    max_good_share_drop: float = 0.15  # canary users' share of good ratings may trail the rest's by this much
    min_ratings: int = 10  # per group: fewer ratings than this are too few to judge on (they are reported)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


def judge(canary: GroupHealth, rest: GroupHealth, limits: RolloutLimits = RolloutLimits()) -> Verdict:
    """Promote unless the canaries did measurably worse than the rest on errors, SLA, the chat
    probe, or (when both groups have enough of them) their users' ratings."""
    problems = []
    if canary.error_rate > rest.error_rate + limits.max_error_rate_increase:
        problems.append(f"error rate {canary.error_rate:.1%} vs {rest.error_rate:.1%}")
    if canary.attainment < rest.attainment - limits.max_attainment_drop:
        p = fewer_by_chance(canary.sla_met, canary.requests, rest.sla_met, rest.requests)
        if p < limits.attainment_alpha or canary.attainment < rest.attainment - limits.max_attainment_drop_any:
            problems.append(f"SLA attainment {canary.attainment:.1%} vs {rest.attainment:.1%} (p = {p:.3f})")
    if not canary.probe_loss <= rest.probe_loss + limits.max_probe_loss_increase:  # NaN fails too
        problems.append(f"probe loss {canary.probe_loss:.3f} vs {rest.probe_loss:.3f}")
    enough = min(canary.ratings.total, rest.ratings.total) >= limits.min_ratings
    if enough and canary.good_share < rest.good_share - limits.max_good_share_drop:
        problems.append(f"users rated {canary.good_share:.0%} of answers good vs {rest.good_share:.0%}")
    feedback = (
        f"users' good ratings {canary.good_share:.0%} (rest {rest.good_share:.0%})"
        if enough
        else f"too few ratings to judge on ({canary.ratings.total} canary, {rest.ratings.total} rest; "
        f"{limits.min_ratings} each needed)"
    )
    if problems:
        return Verdict(False, "canary regressed: " + "; ".join(problems) + f"; {feedback}")
    return Verdict(
        True,
        f"canary held up: error rate {canary.error_rate:.1%}, SLA {canary.attainment:.1%}, "
        f"probe loss {canary.probe_loss:.3f} (rest {rest.probe_loss:.3f}), {feedback}",
    )


def fewer_by_chance(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact test, one-sided: the chance that ``n1`` requests drawn from all ``n1 + n2``
    would hold at most ``k1`` of the ``k1 + k2`` successes, were both groups alike."""
    from math import comb

    total, successes = n1 + n2, k1 + k2
    if n1 == 0 or total == 0:
        return 1.0
    low = max(0, successes - n2)
    return sum(comb(successes, x) * comb(total - successes, n1 - x) for x in range(low, k1 + 1)) / comb(total, n1)


@dataclass
class RolloutReport:
    version: str
    canaries: list[str]
    verdict: Verdict
    canary: GroupHealth
    rest: GroupHealth
    serving: dict[str, str] = field(default_factory=dict)  # node → model version it serves at the end
    before: dict[str, str] = field(default_factory=dict)  # node → model version it served at the start


PROBE_PROMPTS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?"]


class NodeLost(EdgefleetError):
    """A node died or stopped answering during the canary window: no verdict, the window runs again."""


def is_unreachable(exc: BaseException) -> bool:
    """The node did not answer (it died, is restarting, or the call timed out), as opposed to a
    call the node answered with an error."""
    import ray.exceptions

    return isinstance(exc, (TimeoutError, asyncio.TimeoutError, ray.exceptions.RayActorError))


class RolloutController:
    """How a rollout is run: the canary nodes, the window, the probe and every call's timeout."""

    def __init__(
        self,
        cfg: EdgefleetConfig,
        registry: Any,
        *,
        canaries: list[str] | None = None,
        window_s: float = 10.0,
        probe: Sequence[ChatExample] | Sequence[str],
        deadline_ms: float = 5000.0,
        limits: RolloutLimits = RolloutLimits(),
        max_new_tokens: int = 8,
        live_traffic: Callable[[], Any] | None = None,
        max_live_traffic_s: float = 600.0,
        call_timeout_s: float = 10.0,
        probe_timeout_s: float = 120.0,
        swap_timeout_s: float = 300.0,
        canary_timeout_s: float | None = None,
    ) -> None:
        """``probe``: the quality probe, held-out chat exchanges (:func:`edgefleet.eval.sites.probe_chats`)
        or, where there are none, plain texts. ``live_traffic``: run in a thread while the canaries
        are watched, and the window lasts until it returns (the demo's and the tests' simulated
        users; in production, real users' traffic and ratings need no driver).

        Timeouts, in seconds: ``call_timeout_s`` for a node's state and ratings, ``probe_timeout_s``
        for its chat-probe loss, ``swap_timeout_s`` for loading a version; ``canary_timeout_s``
        (default: three windows plus a swap) from the canary's start until it must be judged, else
        the version is rejected as timed out."""
        if not probe:
            raise ValueError("a canary rollout needs a quality probe: held-out chat exchanges or texts")
        self.cfg, self.registry = cfg, registry
        nodes = [n.id for n in cfg.fleet.edge_nodes]
        self.canaries = canaries or nodes[:1]
        unknown = set(self.canaries) - set(nodes)
        if unknown:
            raise ValueError(f"canary nodes {sorted(unknown)} are not edge nodes of this fleet")
        self.rest = [n for n in nodes if n not in self.canaries]
        if not self.rest:
            raise ValueError("a canary rollout needs at least one edge node outside the canary set to compare with")
        self.window_s, self.probe, self.deadline_ms = window_s, list(probe), deadline_ms
        self.limits, self.max_new_tokens, self.live_traffic = limits, max_new_tokens, live_traffic
        self.max_live_traffic_s = max_live_traffic_s
        self.call_timeout_s, self.probe_timeout_s, self.swap_timeout_s = call_timeout_s, probe_timeout_s, swap_timeout_s
        self.canary_timeout_s = 3 * window_s + swap_timeout_s if canary_timeout_s is None else canary_timeout_s

    @classmethod
    def from_config(
        cls,
        cfg: EdgefleetConfig,
        registry: Any = None,
        *,
        canaries: list[str] | None = None,
        window_s: float | None = None,
        probe: Sequence[ChatExample] | Sequence[str] | None = None,
        **options: Any,
    ) -> RolloutController:
        """The controller ``cfg.mlflow`` describes (the one way edgefleet builds it): its registry,
        canary nodes and window, and as the probe the sites' held-out chats (or, without any, a few
        demo documents). Arguments given override the config; ``options`` go to the constructor."""
        from edgefleet.eval.sites import probe_chats
        from edgefleet.mlflow.registry import ModelRegistry
        from edgefleet.train.data import demo_topics

        return cls(
            cfg,
            registry if registry is not None else ModelRegistry.from_config(cfg),
            canaries=canaries or cfg.mlflow.canary_nodes or None,
            window_s=cfg.mlflow.rollout_window_s if window_s is None else window_s,
            probe=probe or probe_chats(cfg) or list(demo_topics().values())[:4],
            **options,
        )

    def roll_out(self, version: str, *, timeout_s: float | None = None) -> RolloutReport:
        """Run the reconciler until the champion ``version`` is promoted everywhere or rolled back
        everywhere (see :meth:`edgefleet.serve.reconciler.Reconciler.settle`)."""
        from edgefleet.serve.reconciler import Reconciler

        return Reconciler(self).settle(str(version), timeout_s=timeout_s)

    async def observe(
        self, actors: dict[str, Any], canaries: list[str], rest: list[str], candidate: set[str], old: set[str]
    ) -> tuple[GroupHealth, GroupHealth, str]:
        """Probe both groups the same way for the window; then the chat probe and users' ratings.
        Returns the canaries' health, the rest's, and a note on anything that went wrong around it.
        Raises :class:`NodeLost` when a node dies or does not answer meanwhile.

        Ratings are counted by the model version that served the rated answer, wherever it is
        stored (feedback lives at the user's site node, whichever node answered): the canaries'
        new version (``candidate``) against what the rest serve (``old``); others (the cloud's,
        answers from before a swap) are left out."""
        watched = [*canaries, *rest]
        counts = {n: [0, 0, 0] for n in watched}  # requests, errors, sla met
        started = time.time()
        failed: list[BaseException] = []

        def drive() -> None:
            try:
                self.live_traffic()
            except BaseException as exc:  # noqa: BLE001 - reported in the verdict, not lost in a thread
                failed.append(exc)

        traffic = threading.Thread(target=drive, name="rollout-live-traffic", daemon=True)
        if self.live_traffic is not None:
            traffic.start()
        deadline = time.monotonic() + self.window_s
        hard_stop = deadline + self.max_live_traffic_s  # a hung driver does not hold the rollout forever
        i = 0
        while (time.monotonic() < deadline or traffic.is_alive()) and time.monotonic() < hard_stop:
            prompt = PROBE_PROMPTS[i % len(PROBE_PROMPTS)]
            i += 1
            await asyncio.gather(*(self._probe(n, actors[n], prompt, counts[n]) for n in watched))
        losses = dict(
            zip(
                watched,
                await asyncio.gather(
                    *(self._call(n, actors[n].probe_loss.remote(self.probe), self.probe_timeout_s) for n in watched)
                ),
                strict=True,
            )
        )
        tallies = await asyncio.gather(
            *(self._call(n, actors[n].feedback_tally.remote(started), self.call_timeout_s) for n in actors),
            return_exceptions=True,
        )
        new, was = Tally(), Tally()
        unread = [n for n, t in zip(actors, tallies, strict=True) if isinstance(t, BaseException)]
        for by_version in tallies:
            for version, tally in by_version.items() if isinstance(by_version, dict) else ():
                if version in candidate:
                    new += tally
                elif version in old:
                    was += tally

        def group(nodes: list[str], ratings: Tally) -> GroupHealth:
            total = [sum(counts[n][i] for n in nodes) for i in range(3)]
            return GroupHealth(*total, probe_loss=sum(losses[n] for n in nodes) / len(nodes), ratings=ratings)

        notes = [f"live traffic failed: {type(failed[0]).__name__}: {failed[0]}"] if failed else []
        if traffic.is_alive():
            notes.append(f"live traffic still running after {self.max_live_traffic_s:.0f} s past the window")
        if unread:
            notes.append(f"no ratings read from {', '.join(unread)}")
        return group(canaries, new), group(rest, was), "; ".join(notes)

    @staticmethod
    async def _call(node: str, ref: Any, timeout_s: float) -> Any:
        """One call to a watched node: its answer, or :class:`NodeLost` if it gave none."""
        try:
            return await asyncio.wait_for(ref, timeout_s)
        except Exception as exc:
            if is_unreachable(exc):
                raise NodeLost(f"{node} did not answer during the canary window ({type(exc).__name__})") from exc
            raise

    async def _probe(self, node: str, actor: Any, prompt: str, count: list[int]) -> None:
        started = time.perf_counter()
        count[0] += 1
        chat = [{"role": "user", "content": prompt}]
        request = GenRequest(f"rollout-probe-{time.time_ns()}", chat, self.max_new_tokens, stream=False)
        try:
            # a probe slower than twice its deadline has missed it: stop waiting, count it an error
            out = await asyncio.wait_for(actor.complete.remote(request), 2 * self.deadline_ms / 1000)
        except Exception as exc:  # noqa: BLE001 - a failed probe is exactly what is being counted
            if not isinstance(exc, (TimeoutError, asyncio.TimeoutError)) and is_unreachable(exc):
                raise NodeLost(f"{node} died during the canary window ({type(exc).__name__})") from exc
            count[1] += 1
            return
        if isinstance(out, Failed):
            count[1] += 1
        elif (time.perf_counter() - started) * 1000 <= self.deadline_ms:
            count[2] += 1
