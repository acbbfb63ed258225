"""The champion reconciler: keeps every edge node on ``@champion``, canary-first (what ``edgefleet up``
runs in the background).

Each pass looks at the registry (the champion alias and its version's tags) and at what each node
says it serves, asks :func:`edgefleet.serve.convergence.decide` what to do, and does it: marks the
version, swaps nodes, runs the canary window (:meth:`RolloutController.observe`) and writes the
verdict as a tag, or rolls the alias back. It then looks again, a few times, until there is
nothing left to do. It keeps nothing in memory between passes, so a reconciler started after
another died mid-rollout finishes or reverts that rollout; a node that restarted or joined late
is seen serving the base model on the next poll and swapped to what it should serve.

Every call to a node has a timeout. A node that does not answer is left alone until it does; a
canary that cannot load the version on trial, or is not ready within the canary deadline, gets
the version rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from edgefleet import metrics
from edgefleet.serve.convergence import (
    CANARY_SINCE,
    PROMOTED,
    REJECTED,
    ChampionMarks,
    FleetState,
    Plan,
    Swap,
    champion_marks,
    decide,
    describe,
    off_champion,
    served_version,
)
from edgefleet.serve.rollout import (
    GroupHealth,
    NodeLost,
    RolloutController,
    RolloutReport,
    Verdict,
    is_unreachable,
    judge,
)

log = logging.getLogger(__name__)
MAX_STEPS = 6  # per pass: mark, swap the canaries, judge, swap the rest, and a look to spare


@dataclass
class Step:
    """One look and what came of it: the plan, the swaps that took, what failed, the canary's report."""

    state: FleetState
    plan: Plan
    swapped: list[Swap] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    report: RolloutReport | None = None
    model_versions: dict[str, str] = field(default_factory=dict)  # node → model version it reported
    watching: str = ""  # another reconciler holds the lease (who): this one only looked

    def describe(self) -> list[str]:
        """What happened, in lines an operator reads."""
        if self.watching:
            return [f"watching: {self.watching} holds the reconciler lease"]
        lines = [f"{s.node} → {describe(s.to)}" + (" (canary)" if s.canary else "") for s in self.swapped]
        if self.plan.promote:
            lines.append(f"v{self.state.champion.version} promoted: {self.plan.promote}")
        if self.plan.reject:
            lines.append(f"v{self.state.champion.version} rejected: {self.plan.reject}")
        if self.report is not None:
            verdict = "promoted" if self.report.verdict.promote else "rolled back"
            lines.append(f"rollout of v{self.report.version}: {verdict} ({self.report.verdict.reason})")
        return lines + self.failures


@dataclass(frozen=True)
class SwapFailed:
    reason: str
    answered: bool  # the node answered with an error (False: it died, restarts, or the call timed out)
    # the error says the version itself cannot be served (no adapter in it, weights that do not
    # load, no such version): retrying cannot help. Anything else (the registry briefly down, a
    # timeout) is retried on the next pass, until the canary deadline.
    definitive: bool = False


class Reconciler:
    def __init__(self, controller: RolloutController, *, on_step: Callable[[Step | Exception], Any] | None = None):
        self.controller, self.on_step = controller, on_step
        self.registry, self.cfg = controller.registry, controller.cfg
        self.base = {n.id: n.model for n in self.cfg.fleet.edge_nodes}
        # who acts on the fleet: one reconciler at a time (edgefleet up, models rollout, a
        # second up by mistake); the others watch until its lease expires
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease_s = 15.0

    # ------------------------------------------------------------ looking

    def look(self) -> FleetState:
        """The fleet as it is now (one synchronous look; what ``edgefleet status`` needs)."""
        return asyncio.run(self._look())[0]

    async def _look(self) -> tuple[FleetState, dict[str, Any], dict[str, str]]:
        marks = champion_marks(self.registry)
        actors = self._actors()
        answers = await asyncio.gather(*(self._model_version(a) for a in actors.values()))
        reported = {n: v for n, v in zip(actors, answers, strict=True) if v is not None}
        state = FleetState(
            nodes=tuple(self.base),
            canaries=tuple(self.controller.canaries),
            champion=marks,
            serving={n: served_version(v, self.registry.name) for n, v in reported.items()},
            now=time.time(),
        )
        return state, actors, reported

    def _actors(self) -> dict[str, Any]:
        import ray

        from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name

        found = {}
        for node in self.base:
            try:
                found[node] = ray.get_actor(actor_name(node, self.cfg.app), namespace=ACTOR_NAMESPACE)
            except ValueError:  # not (yet) started: a site that has not joined
                pass
        return found

    async def _model_version(self, actor: Any) -> str | None:
        from edgefleet.platform.edge_node import node_info

        try:
            return node_info(await asyncio.wait_for(actor.info.remote(), self.controller.call_timeout_s)).model_version
        except Exception as exc:  # noqa: BLE001 - a node that does not answer is left alone this pass
            if not is_unreachable(exc):
                log.warning("an edge node failed to say what it serves: %s", exc)
            return None

    # ------------------------------------------------------------ passes

    def reconcile_once(self, lease_s: float = 15.0) -> list[Step]:
        """Look and act until there is nothing to do, a step fails, or :data:`MAX_STEPS` are done;
        if another reconciler holds the lease (``lease_s``: how long this one takes it for), only
        look: one step, its plan not carried out."""
        self._lease_s = lease_s
        other = self.registry.hold_lease(self.holder, lease_s)
        return asyncio.run(self._pass(watching=other or ""))

    async def _pass(self, watching: str = "") -> list[Step]:
        steps: list[Step] = []
        for _ in range(MAX_STEPS):
            state, actors, reported = await self._look()
            plan = decide(state, canary_timeout_s=self.controller.canary_timeout_s)
            step = Step(state, plan, model_versions=reported, watching=watching)
            steps.append(step)
            if watching:
                break
            self._report_metrics(state, plan)
            if plan.restart_clock:
                self.registry.tag(state.champion.version, CANARY_SINCE, f"{state.now:.3f}")
            if plan.idle:
                break
            await self._act(step, actors)
            if self.on_step is not None and step.describe():
                self.on_step(step)
            if step.failures:  # the next poll tries again
                break
        return steps

    def _report_metrics(self, state: FleetState, plan: Plan) -> None:
        name = self.registry.name
        metrics.champion(name, state.champion.version if state.champion else None)
        metrics.nodes_off_champion(name, off_champion(state))
        metrics.rollout_state(name, plan.state)

    @contextlib.asynccontextmanager
    async def _renewing_lease(self) -> AsyncIterator[list[str]]:
        """Renew the lease every third of its length while a long action runs (swaps, a canary
        window), so it does not lapse mid-way and let a second reconciler act too; a reconciler
        that dies mid-action still loses it within one lease. Yields who took it, if lost."""
        lost: list[str] = []

        async def renew() -> None:
            renewed = time.monotonic()
            while not lost:
                await asyncio.sleep(max(1.0, self._lease_s / 3))
                try:
                    other = await asyncio.to_thread(self.registry.hold_lease, self.holder, self._lease_s)
                except Exception as exc:  # noqa: BLE001 - the registry briefly down: try again
                    if time.monotonic() - renewed > self._lease_s:  # it may have lapsed meanwhile
                        lost.append(f"nobody, for sure (renewal failing: {type(exc).__name__})")
                    continue
                if other:
                    lost.append(other)
                renewed = time.monotonic()

        task = asyncio.create_task(renew())
        try:
            yield lost
        finally:
            task.cancel()

    async def _act(self, step: Step, actors: dict[str, Any]) -> None:
        plan, champion = step.plan, step.state.champion
        # Marks first: a reconciler that dies after one finds it and goes on from there.
        if plan.start_canary:
            self.registry.tag(champion.version, CANARY_SINCE, f"{step.state.now:.3f}")
        if plan.promote:
            self.registry.tag(champion.version, PROMOTED, f"promoted to all edge nodes: {plan.promote}")
        if plan.reject:
            self._reject(champion, plan.reject)
            return
        async with self._renewing_lease():
            results = await asyncio.gather(*(self._swap(actors[s.node], s) for s in plan.swaps))
        for swap, failure in zip(plan.swaps, results, strict=True):
            if failure is None:
                step.swapped.append(swap)
            elif swap.canary and failure.definitive:  # the canary cannot load the version on trial
                self._reject(champion, f"the canary {swap.node} could not load v{swap.to}: {failure.reason}")
                step.failures.append(f"v{swap.to} rejected: {swap.node} could not load it ({failure.reason})")
            else:  # an error elsewhere, or no answer: the next pass tries again (a canary, until its deadline)
                step.failures.append(f"{swap.node} → {describe(swap.to)} failed: {failure.reason}")
        if plan.judge:
            async with self._renewing_lease() as lost:
                report = await self._judge(step, actors, lost)
            step.report = report

    async def _swap(self, actor: Any, swap: Swap) -> SwapFailed | None:
        """Swap one node; None when done."""
        base = self.base[swap.node]
        if swap.to is None:
            ref = actor.swap_model.remote(base)
        else:
            uri = f"models:/{self.registry.name}/{swap.to}"
            ref = actor.swap_to_registry.remote(base, uri, self.registry.uri, self.registry.registry_uri)
        try:
            await asyncio.wait_for(ref, self.controller.swap_timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported, and the next pass tries again
            if is_unreachable(exc):
                timeout = self.controller.swap_timeout_s
                return SwapFailed(f"no answer within {timeout:.0f} s ({type(exc).__name__})", answered=False)
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return SwapFailed(reason, answered=True, definitive=_definitive(exc))
        return None

    async def _judge(self, step: Step, actors: dict[str, Any], lost_lease: list[str]) -> RolloutReport | None:
        """Watch the canaries against the rest for the window; promote or reject on the verdict.
        None when a node was lost meanwhile: no verdict, the next pass runs the window again."""
        state, champion = step.state, step.state.champion
        canaries = list(state.canaries)
        rest = [n for n in state.rest if state.serving.get(n, "") == champion.fallback and n in step.model_versions]
        candidate = {step.model_versions[n] for n in canaries}
        old = {step.model_versions[n] for n in rest}
        unjudged = GroupHealth(0, 0, 0, math.nan)
        try:
            canary, compared, note = await self.controller.observe(actors, canaries, rest, candidate, old)
            verdict = judge(canary, compared, self.controller.limits)
            if note:
                verdict = Verdict(verdict.promote, f"{verdict.reason}; {note}")
        except NodeLost as exc:
            step.failures.append(f"canary window of v{champion.version} inconclusive: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - a window that failed judges nothing: roll back, say why
            canary = compared = unjudged
            verdict = Verdict(False, f"the canary window failed, rolled back unjudged: {type(exc).__name__}: {exc}")
        if lost_lease:  # another reconciler acts now: it judges the version, not this one
            step.failures.append(f"lost the reconciler lease to {lost_lease[0]} during the window: no verdict")
            return None
        if verdict.promote:
            self.registry.tag(champion.version, PROMOTED, f"promoted to all edge nodes: {verdict.reason}")
        else:
            self._reject(champion, verdict.reason)
        return RolloutReport(champion.version, canaries, verdict, canary, compared, before=dict(step.model_versions))

    def _reject(self, champion: ChampionMarks, reason: str) -> None:
        """Mark the version rejected; the alias goes back to the version it replaced, if any."""
        if champion.previous is None:
            self.registry.tag(champion.version, REJECTED, reason)
            return
        try:
            self.registry.rollback(reason, version=champion.version)
        except KeyError:  # the alias moved meanwhile (an operator): still, the version is marked
            self.registry.tag(champion.version, REJECTED, reason)

    # ------------------------------------------------------------ loops

    def run(self, stop: threading.Event, interval_s: float = 5.0) -> None:
        """Pass after pass until ``stop`` is set; a failing pass is reported, never the end of it."""
        try:
            while True:
                try:
                    self.reconcile_once(lease_s=_lease_for(interval_s))
                except Exception as exc:  # noqa: BLE001 - a registry hiccup must not end the reconciler
                    metrics.rollout_state(self.registry.name, "failed")
                    if self.on_step is not None:
                        self.on_step(exc)
                if stop.wait(interval_s):
                    return
        finally:
            with contextlib.suppress(Exception):
                self.registry.release_lease(self.holder)

    def settle(self, version: str, *, timeout_s: float | None = None, interval_s: float = 0.5) -> RolloutReport:
        """Reconcile until the champion ``version`` is promoted or rejected and every node that
        answers serves what it should; the canary window's report (or, when no window was needed,
        the reason it was promoted)."""
        timeout_s = timeout_s if timeout_s is not None else self.controller.canary_timeout_s + 60
        deadline = time.monotonic() + timeout_s
        if self.registry.champion_version() != version:
            raise ValueError(f"v{version} is not the champion of {self.registry.name}: nothing to roll out")
        before = asyncio.run(self._look())[2]
        report = None
        while True:
            steps = self.reconcile_once(lease_s=_lease_for(interval_s))
            # this version's window only: after a rejection the restored champion runs its own
            report = next((s.report for s in reversed(steps) if s.report and s.report.version == version), report)
            marks = ChampionMarks.from_tags(version, self.registry.show(version)["tags"])
            if (marks.promoted or marks.rejected) and steps[-1].plan.idle:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the rollout of v{version} did not settle within {timeout_s:.0f} s")
            time.sleep(interval_s)
        if report is None:  # promoted without a window, or rejected before one
            verdict = Verdict(marks.promoted, marks.rejected or self.registry.show(version)["tags"].get(PROMOTED, ""))
            empty = GroupHealth(0, 0, 0, math.nan)
            report = RolloutReport(version, list(self.controller.canaries), verdict, empty, empty)
        report.before, report.serving = before, steps[-1].model_versions
        self.registry.release_lease(self.holder)
        return report


def _lease_for(interval_s: float) -> float:
    """How long a reconciler polling every ``interval_s`` takes the lease for: a few polls, so one
    that died is replaced within seconds, and a slow pass does not lose it."""
    return max(10.0, 3 * interval_s)


def _definitive(exc: BaseException) -> bool:
    """Whether a node's error loading a version says the version cannot be served (see SwapFailed)."""
    from edgefleet.errors import ModelError

    cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the node's own exception
    if isinstance(cause, ModelError | ValueError):  # e.g. "holds no peft adapter", unreadable weights
        return True
    return getattr(cause, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"  # MLflow: no such version
