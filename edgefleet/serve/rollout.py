"""Canary rollout of a registered version to the edge nodes, with automatic rollback on regression.

When ``champion`` moves to a new version, :class:`RolloutController`:

1. hot-swaps the *canary* edge nodes to it (``EdgeNode.swap_to_registry``: the node pulls the
   adapter from MLflow and loads it beside the old model; requests already running finish on the
   old one, so nothing in flight is dropped);
2. for the window, sends the same probe requests to canaries and to the rest, and measures each
   group's SLA attainment and error rate, plus a fixed quality probe: the served model's loss on a
   probe set of texts;
3. judges (:func:`judge`, pure) and either promotes (the rest swap too) or rolls back (the canaries
   swap back, ``champion`` returns to the previous version, and the reason is tagged).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from edgefleet import metrics
from edgefleet.config import EdgefleetConfig


@dataclass(frozen=True)
class GroupHealth:
    """What a group of nodes showed during the window."""

    requests: int
    errors: int
    sla_met: int
    probe_loss: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def attainment(self) -> float:
        return self.sla_met / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class RolloutLimits:
    max_error_rate_increase: float = 0.05  # canary error rate may exceed the rest's by this much
    max_attainment_drop: float = 0.10  # canary SLA attainment may trail the rest's by this much
    max_probe_loss_increase: float = 0.05  # nats per token on the probe set


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str


def judge(canary: GroupHealth, rest: GroupHealth, limits: RolloutLimits = RolloutLimits()) -> Verdict:
    """Promote unless the canaries did measurably worse than the rest on errors, SLA or quality."""
    problems = []
    if canary.error_rate > rest.error_rate + limits.max_error_rate_increase:
        problems.append(f"error rate {canary.error_rate:.1%} vs {rest.error_rate:.1%}")
    if canary.attainment < rest.attainment - limits.max_attainment_drop:
        problems.append(f"SLA attainment {canary.attainment:.1%} vs {rest.attainment:.1%}")
    if not canary.probe_loss <= rest.probe_loss + limits.max_probe_loss_increase:  # NaN fails too
        problems.append(f"probe loss {canary.probe_loss:.3f} vs {rest.probe_loss:.3f}")
    if problems:
        return Verdict(False, "canary regressed: " + "; ".join(problems))
    return Verdict(
        True,
        f"canary held up: error rate {canary.error_rate:.1%}, SLA {canary.attainment:.1%}, "
        f"probe loss {canary.probe_loss:.3f} (rest {rest.probe_loss:.3f})",
    )


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


class RolloutController:
    def __init__(
        self,
        cfg: EdgefleetConfig,
        registry: Any,
        *,
        canaries: list[str] | None = None,
        window_s: float = 10.0,
        probe_texts: list[str],
        deadline_ms: float = 5000.0,
        limits: RolloutLimits = RolloutLimits(),
        max_new_tokens: int = 8,
    ) -> None:
        self.cfg, self.registry = cfg, registry
        nodes = [n.id for n in cfg.fleet.edge_nodes]
        self.canaries = canaries or nodes[:1]
        self.rest = [n for n in nodes if n not in self.canaries]
        if not self.rest:
            raise ValueError("a canary rollout needs at least one edge node outside the canary set to compare with")
        self.window_s, self.probe_texts, self.deadline_ms = window_s, probe_texts, deadline_ms
        self.limits, self.max_new_tokens = limits, max_new_tokens

    def _actors(self) -> dict[str, Any]:
        import ray

        from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name

        return {
            n.id: ray.get_actor(actor_name(n.id, self.cfg.app), namespace=ACTOR_NAMESPACE)
            for n in self.cfg.fleet.edge_nodes
        }

    def roll_out(self, version: str) -> RolloutReport:
        """Canary ``version``, judge it, then promote it everywhere or roll it back everywhere."""
        try:
            return asyncio.run(self._roll_out(str(version)))
        except BaseException:
            metrics.rollout_state(self.registry.name, "failed")  # not left showing "canary"
            raise

    async def _roll_out(self, version: str) -> RolloutReport:
        actors = self._actors()
        uri = f"models:/{self.registry.name}/{version}"
        base = {n.id: n.model for n in self.cfg.fleet.edge_nodes}
        before = {n: (await actors[n].info.remote())["model_version"] for n in actors}
        metrics.rollout_state(self.registry.name, "canary")
        await asyncio.gather(
            *(actors[n].swap_to_registry.remote(base[n], uri, self.registry.uri) for n in self.canaries)
        )
        canary, rest = await self._observe(actors)
        verdict = judge(canary, rest, self.limits)
        if verdict.promote:
            await asyncio.gather(
                *(actors[n].swap_to_registry.remote(base[n], uri, self.registry.uri) for n in self.rest)
            )
            self.registry.tag(version, "edgefleet.rollout", f"promoted to all edge nodes: {verdict.reason}")
        else:
            previous = self.registry.previous_champion(version)
            if previous:
                prev_uri = f"models:/{self.registry.name}/{previous}"
                await asyncio.gather(
                    *(actors[n].swap_to_registry.remote(base[n], prev_uri, self.registry.uri) for n in self.canaries)
                )
            else:  # no earlier version: back to the base model the config names
                await asyncio.gather(*(actors[n].swap_model.remote(base[n]) for n in self.canaries))
            self.registry.rollback(verdict.reason, version=version)
        after = {n: (await actors[n].info.remote())["model_version"] for n in actors}
        metrics.rollout_state(self.registry.name, "promoted" if verdict.promote else "rolled_back")
        metrics.champion_of(self.registry)
        return RolloutReport(version, self.canaries, verdict, canary, rest, serving=after, before=before)

    async def _observe(self, actors: dict[str, Any]) -> tuple[GroupHealth, GroupHealth]:
        """Probe both groups the same way for the window; then their quality probe."""
        counts = {n: [0, 0, 0] for n in actors}  # requests, errors, sla met
        deadline = time.monotonic() + self.window_s
        i = 0
        while time.monotonic() < deadline:
            prompt = PROBE_PROMPTS[i % len(PROBE_PROMPTS)]
            i += 1
            await asyncio.gather(*(self._probe(actors[n], prompt, counts[n]) for n in actors))
        losses = dict(
            zip(
                actors,
                await asyncio.gather(*(actors[n].probe_loss.remote(self.probe_texts) for n in actors)),
                strict=True,
            )
        )

        def group(nodes: list[str]) -> GroupHealth:
            total = [sum(counts[n][i] for n in nodes) for i in range(3)]
            return GroupHealth(*total, probe_loss=sum(losses[n] for n in nodes) / len(nodes))

        return group(self.canaries), group(self.rest)

    async def _probe(self, actor: Any, prompt: str, count: list[int]) -> None:
        started = time.perf_counter()
        count[0] += 1
        try:
            out = await actor.complete.remote(
                {
                    "request_id": f"rollout-probe-{time.time_ns()}",
                    "stream": False,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_new_tokens": self.max_new_tokens,
                    "temperature": 0.0,
                }
            )
        except Exception:  # noqa: BLE001 - a failed probe is exactly what is being counted
            count[1] += 1
            return
        if out.get("type") == "error":
            count[1] += 1
        elif (time.perf_counter() - started) * 1000 <= self.deadline_ms:
            count[2] += 1


class ChampionWatcher:
    """Rolls out each new ``champion`` as it appears (what ``edgefleet up`` runs in the background)."""

    def __init__(self, controller: RolloutController, *, on_report: Any = None) -> None:
        self.controller, self.on_report = controller, on_report
        self.seen: str | None = None

    def poll_once(self) -> RolloutReport | None:
        """Roll out the champion if it changed since the last poll (the first poll only records it)."""
        champion = self.controller.registry.champion_version()
        metrics.champion(self.controller.registry.name, champion)
        first, self.seen = self.seen is None, champion if self.seen is None else self.seen
        if first:
            metrics.rollout_state(self.controller.registry.name, "idle")
        if first or champion is None or champion == self.seen:
            return None
        self.seen = champion
        report = self.controller.roll_out(champion)
        if not report.verdict.promote:
            self.seen = self.controller.registry.champion_version()  # the rollback moved it: not a new champion
        if self.on_report is not None:
            self.on_report(report)
        return report

    def run(self, stop: Any, interval_s: float = 10.0) -> None:
        while not stop.wait(interval_s):
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - a registry hiccup must not end the watcher
                if self.on_report is not None:
                    self.on_report(exc)
