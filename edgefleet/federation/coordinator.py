"""The round coordinator: private local updates in, a better global adapter out, round after round.

Each round (every step persisted before the next, see :mod:`run_store` and :mod:`round_state`):

1. **sample**: ask every client for the release its next update would make; the privacy ledger
   keeps out anyone it would take past their budget; K of the rest are drawn (seeded per round).
2. **key** (secure aggregation): fresh keys and encrypted Shamir shares, relayed client to client.
3. **train**: every sampled client runs its DP-SGD update on its own node, in its long-lived
   training session (no Ray Train start-up per round), and sends the masked result. The round
   waits until ``round_timeout_s``; clients not done by then are stragglers, dropped and recorded.
   Fewer than the quorum (``min_clients``, ``min_fraction``, the secure-aggregation threshold)
   fails the attempt: nothing was unmasked, nobody is charged, and the round is tried again.
   An update that does not fit the coordinator's own layout (:mod:`payload`) is refused: its
   sender is dropped like a straggler and left out of the round's later attempts.
4. **reveal**: the survivors' shares let the coordinator strip the masks of the *sum*; the
   masked vectors and the shares are persisted, then every survivor's release is charged to the
   ledger (idempotent per client and round).
5. **aggregate** by the strategy (user-level DP noise here, if on), **evaluate** on held-out
   data, and **commit**: the round's row and adapter go to the run directory, then to the
   ``publisher`` (the MLflow registry, :mod:`publication`) and ``on_round``.

Who may take part, the quorum and who is charged are :mod:`round_rules`' (pure); what crosses to
the clients is :mod:`messages`; the update's layout is :mod:`payload`'s.

A coordinator killed at any point and started again on the same run directory picks up where the
persisted state says: after step 4 it finishes the round from disk, without the clients and without
charging anyone again; before it, the round's attempt starts over with fresh keys (the abandoned
masked vectors can never be unmasked, so they cost no privacy).
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefleet import metrics
from edgefleet.config import EdgefleetConfig
from edgefleet.errors import EdgefleetError
from edgefleet.federation import payload, round_rules, strategies
from edgefleet.federation.client_pool import ClientPool
from edgefleet.federation.ledger import PrivacyLedger
from edgefleet.federation.messages import (
    KeysRequest,
    PlanRequest,
    RevealRequest,
    SharesRequest,
    TrainRequest,
)
from edgefleet.federation.round_state import ClientReport, RoundResult, RoundState, RunState
from edgefleet.federation.run_setup import Evaluator, load_evaluator, local_hyper, ray_sessions
from edgefleet.federation.run_store import RunStore
from edgefleet.federation.secagg import SecAggError, SecAggServer
from edgefleet.train.accounting import Release, composed_epsilon
from edgefleet.train.dp import trainable_adapter_names

MAX_ATTEMPTS = 3  # per round, before the run gives up
PLAN_TIMEOUT_S = 20.0  # a client that cannot say what it would spend in this long is unavailable
SESSION_START_S = 600.0  # the first plan also waits for the clients' Train sessions to start (~20 s here)


class RoundFailed(EdgefleetError):
    """A round could not reach its quorum in any attempt; the message says who was missing and why."""


class Publisher(Protocol):
    """Where committed rounds go (:class:`~edgefleet.federation.publication.RoundPublisher`): once
    each, and a round published again after a restart is recognised, not registered twice."""

    def publish(
        self, result: RoundResult, adapter_path: Path, *, base: Any, hp: Any, base_quality: Any
    ) -> str | None: ...

    def held(self, version: str) -> bool:
        """Whether the promotion gate held ``version`` (the next round then does not build on it)."""
        ...


class _AttemptFailed(EdgefleetError):
    def __init__(self, reason: str, exclude: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.exclude = exclude or {}


class Coordinator:
    """Runs federated rounds over ``cfg``'s edge nodes, durably, in ``run_dir``.

    Args:
        cfg: the platform config; ``federation`` and ``privacy`` drive the rounds.
        run_dir: where state lives; an existing run there is resumed.
        clients: node id → a client session with ``call(request, timeout_s) -> reply`` (default: Ray Train).
        evaluator: scores global adapters on held-out data (default: loaded from the config).
        client_delays: seconds a client waits before training (a simulated slow site, like the WAN).
        crash_after: ``(round, step)`` at which this process SIGKILLs itself once that step is
            persisted: fault injection for the resume tests.
        publisher: each committed round goes there once (the MLflow registry; None: nowhere).
        on_round: called with each committed round's result and the version ``publisher`` gave it.
        on_step: told what the run is doing now (a progress line).
    """

    def __init__(
        self,
        cfg: EdgefleetConfig,
        run_dir: str | Path,
        *,
        clients: Callable[[str], Any] | None = None,
        evaluator: Evaluator | None = None,
        client_delays: dict[str, float] | None = None,
        crash_after: tuple[int, str] | None = None,
        publisher: Publisher | None = None,
        on_round: Callable[[RoundResult, str | None], None] | None = None,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg, self.fed, self.privacy = cfg, cfg.federation, cfg.privacy
        # Checked here, not in the config: a one-edge fleet is a fine serving config, it just cannot federate.
        if self.fed.secure_aggregation and self.fed.clients_per_round < 2:
            raise EdgefleetError(
                "federation.secure_aggregation needs clients_per_round >= 2 (one client's sum is "
                "its update); set secure_aggregation: false or sample more clients"
            )
        self.hp = local_hyper(cfg)
        self.store = RunStore(run_dir)
        self.ledger = PrivacyLedger(
            self.store.dir / "ledger.sqlite",
            budget_epsilon=self.privacy.client_budget_epsilon,
            delta=self.privacy.delta,
            accountant=self.privacy.accountant,
        )
        self.nodes = [n.id for n in cfg.fleet.edge_nodes]
        self.rules = round_rules.QuorumRules(self.fed.min_clients, self.fed.min_fraction, self.fed.secure_aggregation)
        self.strategy = strategies.from_config(self.fed)
        self.clients = ClientPool(clients or ray_sessions(cfg))
        self.evaluator = evaluator
        self.client_delays = client_delays or {}
        self.crash_after = crash_after
        self.publisher, self.on_round = publisher, on_round
        self.on_step = on_step or (lambda _: None)
        self.state = self.store.load() or RunState(self.store.dir.name, self._settings())
        settings = self._settings()
        if self.state.settings != settings:
            changed = sorted(k for k in settings if self.state.settings.get(k) != settings[k])
            raise EdgefleetError(
                f"{self.store.dir} holds a run with other settings ({', '.join(changed)}); "
                "resume it with the same config or start a new run directory"
            )

    # ------------------------------------------------------------ run state

    def _settings(self) -> dict[str, Any]:
        return {
            "strategy": self.fed.strategy,
            "secure_aggregation": self.fed.secure_aggregation,
            "user_dp": self.fed.user_dp.model_dump() if self.fed.user_dp else None,
            "nodes": self.nodes,
            "hp": asdict(self.hp) | {"target_modules": list(self.hp.target_modules)},
            "privacy": self.privacy.model_dump(mode="json"),
        }

    def _persist(self, step: str | None = None) -> None:
        cur = self.state.current
        if cur is not None and step is not None:
            cur.status = step
        self.store.save(self.state)
        if cur and self.crash_after == (cur.round, cur.status):
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection: die exactly here, nothing flushed after

    @property
    def completed(self) -> list[RoundResult]:
        return list(self.state.completed)

    # ------------------------------------------------------------ the run

    def run(self, rounds: int) -> list[RoundResult]:
        """Run until ``rounds`` rounds are complete in this run directory (resuming if some are)."""
        try:
            current = self.state.current
            if len(self.state.completed) < rounds and (current is None or current.asks_clients):
                # A client's session takes ~30 s to come up (its processes import torch, Ray Train
                # and Opacus): start them now, and load and evaluate the base model meanwhile. The
                # round's first step asks every candidate anyway.
                excluded = current.excluded if current else {}
                for node in self.nodes:
                    if node not in excluded:
                        try:
                            self.clients.session(node)
                        except Exception:  # noqa: BLE001 - e.g. its node is down: the plan asks again and records why
                            pass
            if self.evaluator is None:
                self.on_step("loading the base model and held-out data")
                self.evaluator = load_evaluator(self.cfg, self.hp)
            if not self.store.adapter_path(0).is_file():
                self.store.save_adapter(0, self.evaluator.initial_adapter())
            if self.state.initial_loss is None:
                self.state.initial_loss = self.evaluator.loss(self.store.load_adapter(0))
                self.store.save(self.state)
            if self.state.initial_quality is None:  # a run from before scores existed gets them too
                self.state.initial_quality = self.evaluator.quality(self.store.load_adapter(0))
                self.store.save(self.state)
            while len(self.state.completed) < rounds:
                self._round()
        finally:
            self.close()
        return self.completed

    def close(self) -> None:
        self.clients.close()

    def _round(self) -> None:
        cur = self.state.current
        while True:
            if cur is None or cur.asks_clients:
                self._attempts(cur)
                cur = self.state.current
                assert cur is not None
            if cur.status == "revealed":
                self._charge(cur)  # before anything is unmasked; idempotent on resume
                try:
                    self._aggregate(cur)
                except (SecAggError, payload.MalformedPayload) as exc:  # shares that rebuild nothing, or a sum
                    # no honest clients make: charged, nothing applied; retried (without the sender, if known)
                    cur.failures = [*cur.failures, f"attempt {cur.attempt}: aggregation failed: {exc}"]
                    cur.excluded |= {exc.client: str(exc)} if getattr(exc, "client", None) else {}
                    self._persist("failed")
                    continue
            break
        if cur.status == "aggregated":
            self._evaluate(cur)
        if cur.status == "evaluated":
            self._prepare_commit(cur)
        if cur.status == "committed":
            self._commit(cur)

    def _attempts(self, previous: RoundState | None) -> None:
        round_id = len(self.state.completed) + 1
        attempt = previous.attempt + 1 if previous and previous.round == round_id else 1
        excluded: dict[str, str] = dict(previous.excluded) if previous else {}
        failures = list(previous.failures) if previous else []
        if previous and previous.status != "failed":  # a restart, not a failure: it does not count
            failures.append(f"attempt {previous.attempt}: coordinator restarted during {previous.status}")
        while True:
            if sum("restarted" not in f for f in failures) >= MAX_ATTEMPTS:
                raise RoundFailed(f"round {round_id} failed {MAX_ATTEMPTS} attempts: {'; '.join(failures)}")
            try:
                self._attempt(round_id, attempt, excluded, failures)
                return
            except _AttemptFailed as exc:
                failures.append(f"attempt {attempt}: {exc}")
                excluded.update(exc.exclude)
                attempt += 1

    def quorum(self, k: int) -> int:
        """Finished clients a round of ``k`` sampled needs."""
        return round_rules.quorum(k, self.rules)

    def _attempt(self, round_id: int, attempt: int, excluded: dict[str, str], failures: list[str]) -> None:
        phases: dict[str, float] = {}
        started = time.perf_counter()
        secure = self.fed.secure_aggregation
        # 1. sample among the available clients the ledger lets take part
        self.on_step(f"round {round_id}: sampling clients")
        candidates = [n for n in self.nodes if n not in excluded]
        # A plan that starts a client's session (first round, or after its run died) waits for the start.
        starting = self.clients.starting(candidates)
        plan_timeout = SESSION_START_S if starting else min(PLAN_TIMEOUT_S, self.fed.round_timeout_s)
        plans, unavailable = self.clients.ask(candidates, lambda c: PlanRequest(self.hp), plan_timeout)
        if starting:
            self.clients.had_their_start(candidates)
        planned = {c: p.release for c, p in plans.items()}
        drawn = round_rules.draw(
            planned,
            self.ledger.can_take_part,
            nodes=len(self.nodes),
            clients_per_round=self.fed.clients_per_round,
            rules=self.rules,
            seed=f"{self.fed.seed}/{round_id}/{attempt}",
        )
        if not drawn.sampled:
            why = (
                f"round {round_id}: {drawn.available} clients available within budget (over budget: "
                f"{drawn.over_budget or 'none'}; unavailable: {unavailable or 'none'})"
            )
            if drawn.final:
                raise RoundFailed(why)  # the budget rules it out for good: no retry can help
            raise _AttemptFailed(why)  # busy or lost clients may be back for the next attempt
        sampled, k = drawn.sampled, len(drawn.sampled)
        phases["sample"] = time.perf_counter() - started
        tag = f"{self.state.run_id}/round-{round_id}/attempt-{attempt}"
        self.state.current = cur = RoundState(
            round_id,
            attempt,
            "sampled",
            sampled=sampled,
            tag=tag,
            excluded=excluded,
            failures=failures,
            unavailable=unavailable,
            over_budget=drawn.over_budget,
            phases=phases,
            wall_started=time.time() - phases["sample"],
        )
        self._persist()
        # 2. secure aggregation's keys and shares
        t = round_rules.threshold(k)
        inboxes: dict[str, dict[str, bytes]] = {}
        if secure:
            mark = time.perf_counter()
            self.on_step(f"round {round_id}: key agreement")
            keys, lost = self.clients.ask(sampled, lambda c: KeysRequest(tag), PLAN_TIMEOUT_S)
            if lost:
                raise _AttemptFailed(f"no keys from {sorted(lost)}", lost)
            roster = [keys[c].keys for c in sampled]
            outboxes, lost = self.clients.ask(sampled, lambda c: SharesRequest(tag, roster, t), PLAN_TIMEOUT_S)
            if lost:
                raise _AttemptFailed(f"no shares from {sorted(lost)}", lost)
            inboxes = SecAggServer.route({c: o.outbox for c, o in outboxes.items()})
            cur.roster = roster
            phases["keys"] = time.perf_counter() - mark
            self._persist("keyed")
        # 3. local training, masked results, under the round deadline
        mark = time.perf_counter()
        self._persist("training")
        self.on_step(f"round {round_id}: {k} clients train on their own data")
        adapter = self.store.load_adapter(self.state.kept_round)
        layout = payload.Layout.of(adapter, trainable_adapter_names(self.hp, adapter))  # ours, not a client's
        clip = self.fed.user_dp.clip_norm if self.fed.user_dp else None
        results, stragglers = self.clients.ask(
            sampled,
            lambda c: TrainRequest(tag, adapter, self.hp, secure, clip, self.client_delays.get(c, 0.0)),
            self.fed.round_timeout_s,
        )
        phases["train"] = time.perf_counter() - mark
        arrived = {c: r.release for c, r in results.items()}
        # updates in the clear are seen on arrival, even a straggler's later
        for c, release in round_rules.charges_on_arrival(sampled, planned, arrived, secure=secure).items():
            self.ledger.record(c, round_id, release, attempt, force=True)
        refused = payload.refusals({c: (r.payload, r.names) for c, r in results.items()}, layout, masked=secure)
        excluded.update(refused)  # a client that sent a malformed update is not asked again this round
        fits = self.ledger.can_take_part
        for c, why in round_rules.left_out_of_the_sum(arrived, refused, fits, secure=secure).items():
            stragglers[c] = why  # never unmasked; under secure aggregation, never charged
            del results[c]
        finished = sorted(results)
        if len(finished) < self.quorum(k):
            raise _AttemptFailed(
                f"{len(finished)} of {k} clients finished, the quorum is {self.quorum(k)} (stragglers: {stragglers})"
            )
        # 4. reveal: only now can the sum be unmasked
        mark = time.perf_counter()
        if secure:
            self.on_step(f"round {round_id}: unmasking the sum")
            dropped = [c for c in sampled if c not in results]
            reveals, lost = self.clients.ask(
                finished, lambda c: RevealRequest(tag, inboxes.get(c, {}), finished, dropped), PLAN_TIMEOUT_S
            )
            if len(reveals) < t:
                raise _AttemptFailed(f"only {len(reveals)} clients revealed shares, the threshold is {t} ({lost})")
            cur.revealed = {c: r.shares for c, r in reveals.items()}
            cur.rejected = {c: r.rejected for c, r in reveals.items()}
        phases["reveal"] = time.perf_counter() - mark
        self.store.save_vectors(round_id, {c: results[c].payload for c in finished})
        cur.finished, cur.stragglers, cur.threshold = finished, stragglers, t
        cur.names = list(layout.names)
        cur.noise_seed = int.from_bytes(os.urandom(8), "little")
        cur.clients = {
            c: ClientReport(results[c].release, results[c].train_s, results[c].step_s, results[c].ran_on)
            for c in finished
        }
        self._persist("revealed")

    def _charge(self, cur: RoundState) -> None:
        """Record every survivor's release: it is revealed in the sum (idempotent per client, round, attempt)."""
        arrived = {c: report.release for c, report in cur.clients.items()}
        for c, release in round_rules.charges_at_reveal(cur.finished, arrived).items():
            self.ledger.record(c, cur.round, release, cur.attempt, force=True)

    def _aggregate(self, cur: RoundState) -> None:
        self.on_step(f"round {cur.round}: aggregating ({self.fed.strategy})")
        mark = time.perf_counter()
        vectors = self.store.load_vectors(cur.round)
        adapter = self.store.load_adapter(self.state.kept_round)  # what the clients started from
        layout = payload.Layout.of(adapter, cur.names)
        if self.fed.secure_aggregation:
            server = SecAggServer(cur.roster, threshold=cur.threshold, round_tag=cur.tag.encode(), length=layout.length)
            for c in cur.finished:
                server.add_masked(c, vectors[c])
            total = payload.decode(server.unmask(cur.revealed), layout)
            cur.tampered = server.tampered
            each = None  # the sum is all there is
        else:  # checked on arrival; read again, naming its sender, since a run from before the check may hold any
            each = [payload.decode(vectors[c], layout, client=c) for c in cur.finished]
            total = payload.decode(sum(vectors[c] for c in cur.finished), layout)
        # the payloads' sums give the weighted mean train loss; under user-level DP there is none
        # (an un-noised sum would sit outside its guarantee)
        cur.train_loss = total.mean_loss if self.strategy.reports_loss else math.nan
        # The seed was drawn from OS entropy at reveal and is deleted at commit; persisting it
        # makes a re-aggregation after a crash draw the *same* noise, never a second sample.
        mean = self.strategy.aggregate(total, each, sampled=len(cur.sampled), rng=np.random.default_rng(cur.noise_seed))
        delta = strategies.unflatten(mean, adapter, cur.names)
        if self.strategy.stateful:  # its state after round r−1 in, after round r out: replayable
            delta, server_state = self.strategy.server_step(delta, self.store.load_server_state(cur.round - 1))
            self.store.save_server_state(cur.round, server_state)
        new = {k: (v + delta[k].to(v.dtype)) if k in delta else v for k, v in adapter.items()}
        self.store.save_adapter(cur.round, new)
        cur.phases["aggregate"] = time.perf_counter() - mark
        self._persist("aggregated")

    def _evaluate(self, cur: RoundState) -> None:
        self.on_step(f"round {cur.round}: held-out evaluation")
        mark = time.perf_counter()
        adapter = self.store.load_adapter(cur.round)
        cur.held_out_loss = self.evaluator.loss(adapter)
        cur.quality = self.evaluator.quality(adapter)
        cur.phases["evaluate"] = time.perf_counter() - mark
        self._persist("evaluated")

    def _prepare_commit(self, cur: RoundState) -> None:
        """Freeze the round's result, and drop what could rebuild the noise-free sum."""
        if self.fed.user_dp:
            # q = 1: who took part is published (round results, registry lineage), so no amplification
            # by subsampling is claimed for the user-level guarantee.
            self.state.user_dp_history.append(Release(self.fed.user_dp.noise_multiplier, 1.0, 1))
        history = self.state.user_dp_history
        user_eps = composed_epsilon(history, self.privacy.delta, self.privacy.accountant) if history else None
        clients = cur.clients
        result = RoundResult(
            round=cur.round,
            attempt=cur.attempt,
            sampled=cur.sampled,
            finished=cur.finished,
            stragglers=cur.stragglers,
            train_loss=cur.train_loss,
            held_out_loss=cur.held_out_loss,
            perplexity=math.exp(cur.held_out_loss),
            epsilon={c: self.ledger.epsilon(c) for c in self.nodes},
            user_epsilon=user_eps,
            wall_s=time.time() - cur.wall_started,
            phases=cur.phases,
            client_train_s={c: clients[c].train_s for c in cur.finished},
            client_step_s={c: clients[c].step_s for c in cur.finished},
            ran_on={c: clients[c].ran_on for c in cur.finished},
            quality=cur.quality,
        )
        self.state.current = RoundState.committed(result)
        self._persist()
        self.store.drop_round_secrets(cur.round)

    def _commit(self, cur: RoundState) -> None:
        """Publish a frozen result once: to the run's history, the rounds file, the publisher and ``on_round``."""
        result = cur.result
        assert result is not None
        self.store.append_round(asdict(result))  # idempotent: a round already in the file is not added
        metrics.round_committed(
            self.store.dir.name, result.round, result.wall_s, result.epsilon, self.privacy.client_budget_epsilon
        )
        version = None
        if self.publisher is not None:  # at least once; the publisher recognises a round it has
            self.on_step(f"round {result.round}: publishing the model")
            version = self.publisher.publish(
                result,
                self.store.adapter_path(result.round),
                base=self.evaluator.base if self.evaluator else None,
                hp=self.hp,
                base_quality=self.state.initial_quality,
            )
        if version is None or not self.publisher.held(version):
            self.state.kept_round = result.round
        if self.on_round is not None:
            self.on_round(result, version)
        self.state.completed.append(result)
        self.state.current = None
        self.store.save(self.state)


__all__ = ["Coordinator", "Evaluator", "RoundFailed", "RoundResult", "load_evaluator", "local_hyper", "ray_sessions"]
