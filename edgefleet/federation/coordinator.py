"""The round coordinator: private local updates in, a better global adapter out, round after round.

Each round (every step persisted before the next, see :mod:`run_store`):

1. **sample**: ask every client for the release its next update would make; the privacy ledger
   keeps out anyone it would take past their budget; K of the rest are drawn (seeded per round).
2. **key** (secure aggregation): fresh keys and encrypted Shamir shares, relayed client to client.
3. **train**: every sampled client runs its DP-SGD update on its own node, in its long-lived
   training session (no Ray Train start-up per round), and sends the masked result. The round
   waits until ``round_timeout_s``; clients not done by then are stragglers, dropped and recorded.
   Fewer than the quorum (``min_clients``, ``min_fraction``, the secure-aggregation threshold)
   fails the attempt: nothing was unmasked, nobody is charged, and the round is tried again.
4. **reveal**: the survivors' shares let the coordinator strip the masks of the *sum*; the
   masked vectors and the shares are persisted, then every survivor's release is charged to the
   ledger (idempotent per client and round).
5. **aggregate** by the strategy (user-level DP noise here, if on), **evaluate** on held-out
   data, and **commit**: the round's row and adapter go to the run directory and to ``on_round``
   (the MLflow registry's hook, next).

A coordinator killed at any point and started again on the same run directory picks up where the
persisted state says: after step 4 it finishes the round from disk, without the clients and without
charging anyone again; before it, the round's attempt starts over with fresh keys (the abandoned
masked vectors can never be unmasked, so they cost no privacy).
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet import metrics
from edgefleet.config import EdgefleetConfig
from edgefleet.errors import EdgefleetError
from edgefleet.eval.scores import Quality
from edgefleet.federation import strategies as S
from edgefleet.federation.ledger import PrivacyLedger
from edgefleet.federation.run_setup import Evaluator, load_evaluator, local_hyper, ray_sessions
from edgefleet.federation.run_store import RunStore
from edgefleet.federation.secagg import AdvertisedKeys, RevealedShare, SecAggError, SecAggServer
from edgefleet.train.accounting import Release, composed_epsilon

MAX_ATTEMPTS = 3  # per round, before the run gives up
PLAN_TIMEOUT_S = 20.0  # a client that cannot say what it would spend in this long is unavailable
SESSION_START_S = 600.0  # the first plan also waits for the clients' Train sessions to start (~20 s here)


class RoundFailed(EdgefleetError):
    """A round could not reach its quorum in any attempt; the message says who was missing and why."""


class _AttemptFailed(Exception):
    def __init__(self, reason: str, exclude: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.exclude = exclude or {}


@dataclass(frozen=True)
class RoundResult:
    round: int
    attempt: int
    sampled: list[str]
    finished: list[str]
    stragglers: dict[str, str]  # client → why it was dropped
    train_loss: float  # mean over the finished clients' local updates
    held_out_loss: float  # of the new global model
    perplexity: float
    epsilon: dict[str, float]  # every client's composed ε so far (sample-level, DP-SGD)
    user_epsilon: float | None  # the user-level guarantee so far (DP-FedAvg), when on
    wall_s: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step
    client_train_s: dict[str, float] = field(default_factory=dict)  # pure compute per client
    client_step_s: dict[str, float] = field(default_factory=dict)  # the whole train step on the node
    ran_on: dict[str, str | None] = field(default_factory=dict)  # client → the node label its update ran on
    # What users get (eval/scores.py), when the sites have held-out questions: task score and guard
    quality: Quality | None = None

    def __post_init__(self) -> None:
        if isinstance(self.quality, dict):  # read back from the run's JSON state
            object.__setattr__(self, "quality", Quality.from_json(self.quality))


class Coordinator:
    """Runs federated rounds over ``cfg``'s edge nodes, durably, in ``run_dir``.

    Args:
        cfg: the platform config; ``federation`` and ``privacy`` drive the rounds.
        run_dir: where state lives; an existing run there is resumed.
        clients: node id → a client session with ``call(task, timeout_s) -> dict`` (default: Ray Train).
        evaluator: scores global adapters on held-out data (default: loaded from the config).
        client_delays: seconds a client waits before training (a simulated slow site, like the WAN).
        crash_after: ``(round, step)`` at which this process SIGKILLs itself once that step is
            persisted: fault injection for the resume tests.
        on_round: called with each committed round's result and its adapter file.
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
        on_round: Callable[[RoundResult, Path], None] | None = None,
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
        self._start_client = clients or ray_sessions(cfg)
        self._sessions: dict[str, Any] = {}
        self._unanswered: set[str] = set()  # sessions started that have not answered yet: maybe still starting
        self.evaluator = evaluator
        self.client_delays = client_delays or {}
        self.crash_after = crash_after
        self.on_round, self.on_step = on_round, on_step or (lambda _: None)
        self.state = self.store.load() or self._fresh_state()
        settings = self._settings()
        if self.state["settings"] != settings:
            changed = sorted(k for k in settings if self.state["settings"].get(k) != settings[k])
            raise EdgefleetError(
                f"{self.store.dir} holds a run with other settings ({', '.join(changed)}); "
                "resume it with the same config or start a new run directory"
            )
        self._server_opt = None
        if self.fed.strategy in ("fedadam", "fedyogi"):
            self._server_opt = S.ServerOptimizer(self.fed.strategy.removeprefix("fed"), lr=self.fed.server_lr)

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

    def _fresh_state(self) -> dict[str, Any]:
        run_id = self.store.dir.name
        return {
            "run_id": run_id,
            "settings": self._settings(),
            "completed": [],
            "current": None,
            "initial_loss": None,
            "initial_quality": None,  # the base model's Quality: what the first version must beat
            "user_dp_history": [],
        }

    def _persist(self, step: str | None = None) -> None:
        cur = self.state["current"]
        if step is not None:
            cur["status"] = step
        self.store.save(self.state)
        if cur and self.crash_after == (cur["round"], cur["status"]):
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection: die exactly here, nothing flushed after

    @property
    def completed(self) -> list[RoundResult]:
        return [RoundResult(**r) for r in self.state["completed"]]

    # ------------------------------------------------------------ the run

    def run(self, rounds: int) -> list[RoundResult]:
        """Run until ``rounds`` rounds are complete in this run directory (resuming if some are)."""
        try:
            if len(self.state["completed"]) < rounds and _asks_clients(self.state["current"]):
                # A client's session takes ~30 s to come up (its processes import torch, Ray Train
                # and Opacus): start them now, and load and evaluate the base model meanwhile. The
                # round's first step asks every candidate anyway.
                excluded = (self.state["current"] or {}).get("excluded", {})
                for node in self.nodes:
                    if node not in excluded:
                        try:
                            self._session(node)
                        except Exception:  # noqa: BLE001 - e.g. its node is down: the plan asks again and records why
                            pass
            if self.evaluator is None:
                self.on_step("loading the base model and held-out data")
                self.evaluator = load_evaluator(self.cfg, self.hp)
            if not self.store.adapter_path(0).is_file():
                self.store.save_adapter(0, self.evaluator.initial_adapter())
            if self.state["initial_loss"] is None:
                self.state["initial_loss"] = self.evaluator.loss(self.store.load_adapter(0))
                self.store.save(self.state)
            if self.state.get("initial_quality") is None:  # a run from before scores existed gets them too
                quality = self.evaluator.quality(self.store.load_adapter(0))
                self.state["initial_quality"] = asdict(quality) if quality else None
                self.store.save(self.state)
            while len(self.state["completed"]) < rounds:
                self._round()
        finally:
            self.close()
        return self.completed

    def close(self) -> None:
        for s in self._sessions.values():
            s.close(timeout_s=5)
        self._sessions.clear()
        self._unanswered.clear()

    def _session(self, node: str) -> Any:
        if not self._session_ready(node):  # new, or its Train run died (worker killed, node lost): start anew
            if node in self._sessions:
                self._sessions.pop(node).close(timeout_s=0)  # its mailbox goes with it
            self._sessions[node] = self._start_client(node)
            self._unanswered.add(node)
        return self._sessions[node]

    def _session_ready(self, node: str) -> bool:
        session = self._sessions.get(node)
        return session is not None and getattr(session, "alive", True)

    def _round(self) -> None:
        cur = self.state["current"]
        while True:
            if _asks_clients(cur):
                self._attempts(cur)
                cur = self.state["current"]
            if cur["status"] == "revealed":
                self._charge(cur)  # before anything is unmasked; idempotent on resume
                try:
                    self._aggregate(cur)
                except SecAggError as exc:  # shares that rebuild nothing: charged, never unmasked; retry
                    cur["failures"] = [*cur["failures"], f"attempt {cur['attempt']}: unmasking failed: {exc}"]
                    self._persist("failed")
                    continue
            break
        if cur["status"] == "aggregated":
            self._evaluate(cur)
        if cur["status"] == "evaluated":
            self._prepare_commit(cur)
        if cur["status"] == "committed":
            self._commit(cur)

    def _attempts(self, previous: dict[str, Any] | None) -> None:
        round_id = len(self.state["completed"]) + 1
        attempt = previous["attempt"] + 1 if previous and previous["round"] == round_id else 1
        excluded: dict[str, str] = dict(previous.get("excluded", {})) if previous else {}
        failures = list(previous.get("failures", [])) if previous else []
        if previous and previous["status"] != "failed":  # a restart, not a failure: it does not count
            failures.append(f"attempt {previous['attempt']}: coordinator restarted during {previous['status']}")
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

    def _ask(
        self, clients: list[str], task: Callable[[str], dict[str, Any]], timeout_s: float
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Send each client its task at once; (answers, client → why no answer) by ``timeout_s``."""

        def one(c: str) -> dict[str, Any]:
            answer = self._session(c).call(task(c), timeout_s=timeout_s)
            self._unanswered.discard(c)  # its session is up
            return answer

        answers, failed = {}, {}
        with ThreadPoolExecutor(max(1, len(clients))) as pool:
            futures = {c: pool.submit(one, c) for c in clients}
            for c, fut in futures.items():
                try:
                    out = fut.result()
                except TimeoutError:
                    failed[c] = f"no answer within {timeout_s:.0f} s"
                    continue
                except Exception as exc:  # noqa: BLE001 - a lost client is recorded, not fatal
                    failed[c] = f"{type(exc).__name__}: {exc}"
                    continue
                if "error" in out:
                    failed[c] = out["error"]
                else:
                    answers[c] = out
        return answers, failed

    def quorum(self, k: int) -> int:
        """Finished clients a round of ``k`` sampled needs."""
        need = max(self.fed.min_clients, math.ceil(self.fed.min_fraction * k - 1e-9))
        return min(k, max(need, self.threshold(k))) if self.fed.secure_aggregation else min(k, need)

    @staticmethod
    def threshold(k: int) -> int:
        """Shamir threshold t: a majority of the sampled clients, at least 2."""
        return max(2, k // 2 + 1)

    def _attempt(self, round_id: int, attempt: int, excluded: dict[str, str], failures: list[str]) -> None:
        phases: dict[str, float] = {}
        started = time.perf_counter()
        hp = asdict(self.hp)
        # 1. sample among the available clients the ledger lets take part
        self.on_step(f"round {round_id}: sampling clients")
        candidates = [n for n in self.nodes if n not in excluded]
        # A plan that starts a client's session (first round, or after its run died) waits for the start.
        starting = any(c in self._unanswered or not self._session_ready(c) for c in candidates)
        plan_timeout = SESSION_START_S if starting else min(PLAN_TIMEOUT_S, self.fed.round_timeout_s)
        plans, unavailable = self._ask(candidates, lambda c: {"op": "plan", "hp": hp}, plan_timeout)
        if starting:  # each had its start-up time: one still silent is slow or stuck, not starting
            self._unanswered.difference_update(candidates)
        over_budget = sorted(c for c, p in plans.items() if not self.ledger.can_take_part(c, Release(**p["release"])))
        eligible = sorted(c for c in plans if c not in over_budget)
        k = min(self.fed.clients_per_round, len(eligible))
        if k == 0 or k < self.quorum(self.fed.clients_per_round) or (self.fed.secure_aggregation and k < 2):
            why = (
                f"round {round_id}: {len(eligible)} clients available within budget (over budget: "
                f"{over_budget or 'none'}; unavailable: {unavailable or 'none'})"
            )
            if len(self.nodes) - len(over_budget) < self.quorum(self.fed.clients_per_round):
                raise RoundFailed(why)  # the budget rules it out for good: no retry can help
            raise _AttemptFailed(why)  # busy or lost clients may be back for the next attempt
        sampled = sorted(random.Random(f"{self.fed.seed}/{round_id}/{attempt}").sample(eligible, k))
        phases["sample"] = time.perf_counter() - started
        tag = f"{self.state['run_id']}/round-{round_id}/attempt-{attempt}"
        self.state["current"] = cur = {
            "round": round_id,
            "attempt": attempt,
            "status": "sampled",
            "sampled": sampled,
            "tag": tag,
            "excluded": excluded,
            "failures": failures,
            "unavailable": unavailable,
            "over_budget": over_budget,
            "phases": phases,
            "wall_started": time.time() - phases["sample"],
        }
        self._persist()
        # 2. secure aggregation's keys and shares
        t = self.threshold(k)
        roster: list[dict[str, Any]] = []
        inboxes: dict[str, dict[str, bytes]] = {}
        if self.fed.secure_aggregation:
            mark = time.perf_counter()
            self.on_step(f"round {round_id}: key agreement")
            keys, lost = self._ask(sampled, lambda c: {"op": "keys", "tag": tag}, PLAN_TIMEOUT_S)
            if lost:
                raise _AttemptFailed(f"no keys from {sorted(lost)}", lost)
            roster = [keys[c]["keys"] for c in sampled]
            outboxes, lost = self._ask(
                sampled, lambda c: {"op": "shares", "tag": tag, "roster": roster, "threshold": t}, PLAN_TIMEOUT_S
            )
            if lost:
                raise _AttemptFailed(f"no shares from {sorted(lost)}", lost)
            inboxes = SecAggServer.route({c: o["outbox"] for c, o in outboxes.items()})
            cur["roster"] = [{k: v.hex() if isinstance(v, bytes) else v for k, v in r.items()} for r in roster]
            phases["keys"] = time.perf_counter() - mark
            self._persist("keyed")
        # 3. local training, masked results, under the round deadline
        mark = time.perf_counter()
        self._persist("training")
        self.on_step(f"round {round_id}: {k} clients train on their own data")
        adapter = self.store.load_adapter(round_id - 1)
        clip = self.fed.user_dp.clip_norm if self.fed.user_dp else None
        results, stragglers = self._ask(
            sampled,
            lambda c: {
                "op": "train",
                "tag": tag,
                "adapter": adapter,
                "hp": hp,
                "secure": self.fed.secure_aggregation,
                "user_clip": clip,
                "delay_s": self.client_delays.get(c, 0.0),
            },
            self.fed.round_timeout_s,
        )
        phases["train"] = time.perf_counter() - mark
        if not self.fed.secure_aggregation:  # updates in the clear: seen on arrival, even a straggler's later
            for c in sampled:
                if c in results:
                    self.ledger.record(c, round_id, Release(**results[c]["release"]), attempt, force=True)
                else:  # its update may still come in: charged as planned, never under-counted
                    self.ledger.record(c, round_id, Release(**plans[c]["release"]), attempt, force=True)
        else:  # a client that spent more than planned stays masked forever: its share of the sum is never revealed
            for c in [c for c in results if not self.ledger.can_take_part(c, Release(**results[c]["release"]))]:
                stragglers[c] = "its release would exceed its privacy budget"
                del results[c]
        finished = sorted(results)
        if len(finished) < self.quorum(k):
            raise _AttemptFailed(
                f"{len(finished)} of {k} clients finished, the quorum is {self.quorum(k)} (stragglers: {stragglers})"
            )
        # 4. reveal: only now can the sum be unmasked
        mark = time.perf_counter()
        revealed: dict[str, list[dict[str, Any]]] = {}
        if self.fed.secure_aggregation:
            self.on_step(f"round {round_id}: unmasking the sum")
            dropped = [c for c in sampled if c not in results]
            answers, lost = self._ask(
                finished,
                lambda c: {
                    "op": "reveal",
                    "tag": tag,
                    "inbox": inboxes.get(c, {}),
                    "survivors": finished,
                    "dropped": dropped,
                },
                PLAN_TIMEOUT_S,
            )
            if len(answers) < t:
                raise _AttemptFailed(f"only {len(answers)} clients revealed shares, the threshold is {t} ({lost})")
            revealed = {c: a["shares"] for c, a in answers.items()}
        phases["reveal"] = time.perf_counter() - mark
        self.store.save_vectors(round_id, {c: results[c]["vector"] for c in finished})
        cur.update(
            finished=finished,
            stragglers=stragglers,
            revealed=revealed,
            threshold=t,
            names=results[finished[0]]["names"],
            noise_seed=int.from_bytes(os.urandom(8), "little"),
            rejected={c: a.get("rejected", []) for c, a in answers.items()} if revealed else {},
            clients={c: {k: results[c][k] for k in ("release", "train_s", "step_s", "ran_on")} for c in finished},
        )
        self._persist("revealed")

    def _charge(self, cur: dict[str, Any]) -> None:
        """Record every survivor's release: it is revealed in the sum (idempotent per client, round, attempt)."""
        for c in cur["finished"]:
            self.ledger.record(c, cur["round"], Release(**cur["clients"][c]["release"]), cur["attempt"], force=True)

    def _aggregate(self, cur: dict[str, Any]) -> None:
        self.on_step(f"round {cur['round']}: aggregating ({self.fed.strategy})")
        mark = time.perf_counter()
        vectors = self.store.load_vectors(cur["round"])
        adapter = self.store.load_adapter(cur["round"] - 1)
        names = cur["names"]
        if self.fed.secure_aggregation:
            roster = [
                AdvertisedKeys(**{k: bytes.fromhex(v) if k != "client" else v for k, v in r.items()})
                for r in cur["roster"]
            ]
            server = SecAggServer(
                roster,
                threshold=cur["threshold"],
                round_tag=cur["tag"].encode(),
                length=len(next(iter(vectors.values()))),
            )
            for c in cur["finished"]:
                server.add_masked(c, vectors[c])
            total = server.unmask({c: [RevealedShare(**s) for s in shares] for c, shares in cur["revealed"].items()})
            cur["tampered"] = server.tampered
        else:
            total = sum(vectors[c] for c in cur["finished"])
        # every payload is [update…, weight, weight·loss]: the sums give the weighted mean train loss
        # (under user-level DP clients send no loss: an un-noised sum would sit outside its guarantee)
        cur["train_loss"] = float(total[-1] / total[-2]) if total[-2] > 0 and not self.fed.user_dp else math.nan
        if self.fed.user_dp:  # DP-FedAvg: clipped, unweighted sum + N(0, (σC)²)
            udp = self.fed.user_dp
            # The seed was drawn from OS entropy at reveal and is deleted at commit; persisting it
            # makes a re-aggregation after a crash draw the *same* noise, never a second sample.
            mean = S.dp_fedavg_from_sum(
                total[:-2],
                len(cur["sampled"]),
                udp.clip_norm,
                udp.noise_multiplier,
                np.random.default_rng(cur["noise_seed"]),
            )
        elif self.fed.strategy in S.NEEDS_EACH_UPDATE:
            updates = [
                S.ClientUpdate({"v": _t(vectors[c][:-2] / vectors[c][-2])}, int(vectors[c][-2]))
                for c in cur["finished"]
            ]
            mean = S.aggregate(self.fed.strategy, updates, trim=self.fed.trim)["v"].numpy()
        else:
            mean = S.fedavg_from_sum(total[:-2], float(total[-2]))
        delta = S.unflatten(mean, adapter, names)
        if self._server_opt is not None:  # its state after round r−1 in, after round r out: replayable
            self._server_opt.load_state_dict(self.store.load_server_state(cur["round"] - 1))
            delta = self._server_opt.apply({k: v.float() for k, v in delta.items()})
            self.store.save_server_state(cur["round"], self._server_opt.state_dict())
        new = {k: (v + delta[k].to(v.dtype)) if k in delta else v for k, v in adapter.items()}
        self.store.save_adapter(cur["round"], new)
        cur["phases"]["aggregate"] = time.perf_counter() - mark
        self._persist("aggregated")

    def _evaluate(self, cur: dict[str, Any]) -> None:
        self.on_step(f"round {cur['round']}: held-out evaluation")
        mark = time.perf_counter()
        adapter = self.store.load_adapter(cur["round"])
        cur["held_out_loss"] = self.evaluator.loss(adapter)
        quality = self.evaluator.quality(adapter)
        cur["quality"] = asdict(quality) if quality else None
        cur["phases"]["evaluate"] = time.perf_counter() - mark
        self._persist("evaluated")

    def _prepare_commit(self, cur: dict[str, Any]) -> None:
        """Freeze the round's result, and drop what could rebuild the noise-free sum."""
        if self.fed.user_dp:
            # q = 1: who took part is published (round results, registry lineage), so no amplification
            # by subsampling is claimed for the user-level guarantee.
            self.state["user_dp_history"].append([self.fed.user_dp.noise_multiplier, 1.0, 1])
        history = [Release(*h) for h in self.state["user_dp_history"]]
        user_eps = composed_epsilon(history, self.privacy.delta, self.privacy.accountant) if history else None
        clients = cur["clients"]
        result = RoundResult(
            round=cur["round"],
            attempt=cur["attempt"],
            sampled=cur["sampled"],
            finished=cur["finished"],
            stragglers=cur["stragglers"],
            train_loss=cur["train_loss"],
            held_out_loss=cur["held_out_loss"],
            perplexity=math.exp(cur["held_out_loss"]),
            epsilon={c: self.ledger.epsilon(c) for c in self.nodes},
            user_epsilon=user_eps,
            wall_s=time.time() - cur["wall_started"],
            phases=cur["phases"],
            client_train_s={c: clients[c]["train_s"] for c in cur["finished"]},
            client_step_s={c: clients[c]["step_s"] for c in cur["finished"]},
            ran_on={c: clients[c].get("ran_on") for c in cur["finished"]},
            quality=cur.get("quality"),
        )
        self.state["current"] = {"round": cur["round"], "attempt": cur["attempt"], "result": asdict(result)}
        self._persist("committed")
        self.store.drop_round_secrets(cur["round"])

    def _commit(self, cur: dict[str, Any]) -> None:
        """Publish a frozen result once: to the run's history, the rounds file and ``on_round``."""
        result = RoundResult(**cur["result"])
        self.store.append_round(asdict(result))  # idempotent: a round already in the file is not added
        metrics.round_committed(
            self.store.dir.name, result.round, result.wall_s, result.epsilon, self.privacy.client_budget_epsilon
        )
        if self.on_round is not None:  # at least once; the registry hook recognises a round it has
            self.on_round(result, self.store.adapter_path(result.round))
        self.state["completed"].append(cur["result"])
        self.state["current"] = None
        self.store.save(self.state)


def _asks_clients(current: dict[str, Any] | None) -> bool:
    """Whether the run's next step is an attempt at a round (it asks the clients), not a step that
    finishes an aggregated round from disk."""
    return current is None or current["status"] in ("sampled", "keyed", "training", "failed")


def _t(x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


__all__ = ["Coordinator", "Evaluator", "RoundFailed", "RoundResult", "load_evaluator", "local_hyper", "ray_sessions"]
