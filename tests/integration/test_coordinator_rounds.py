"""The coordinator's rounds on real Opacus updates of the tiny model, with the clients in this process.

The transport here is a direct call of the client's handler (what runs on the node inside its Ray
Train session); the Ray path and stragglers are in test_federation_ray.py, a real kill/resume (a
SIGKILLed `edgefleet federate` Ray Job, resubmitted) in test_operations.py.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from edgefleet.config import parse_config
from edgefleet.federation.coordinator import Coordinator, RoundFailed, load_evaluator, local_hyper
from edgefleet.federation.messages import Trained
from edgefleet.federation.participant import handle
from edgefleet.federation.secagg import decode
from edgefleet.platform.models import load_trainable
from edgefleet.train.data import chunk_for_causal_lm, node_data_dir, read_texts, write_demo_shards
from edgefleet.train.jobs import SessionContext, StepFailed
from tests.conftest import make_test_config_dict

pytestmark = pytest.mark.slow


class InProcessClient:
    """A client whose node is this process: the same handler a Train session runs, called directly."""

    def __init__(self, cfg, node_id, base, tok):
        data = read_texts(node_data_dir(cfg, cfg.fleet.edge(node_id)))
        self.base, self.blocks = base, chunk_for_causal_lm(data, tok, cfg.federation.block_size)
        self.context = SessionContext(node_id, cfg.privacy)

    def call(self, request, timeout_s):
        try:
            return handle(self.base, self.blocks, request, self.context)
        except Exception as exc:  # what the session's loop does with a failed step
            raise StepFailed(f"{type(exc).__name__}: {exc}") from exc

    def close(self, timeout_s=0):
        pass


def federation_config(tmp_path, **federation):
    data = make_test_config_dict() | {"cache_dir": str(tmp_path / "cache")}
    data["federation"] = {
        "clients_per_round": 3,
        "min_clients": 2,
        "local_steps": 8,
        "batch_size": 32,
        "block_size": 64,
        "lr": 0.02,
        "held_out_blocks": 64,
        **federation,
    }
    cfg = parse_config(data)
    write_demo_shards(cfg)
    return cfg


class WatchedCoordinator(Coordinator):
    """Keeps a copy of what the coordinator holds on disk at the moment it charges the ledger."""

    def _charge(self, cur):
        self.seen_vectors = getattr(self, "seen_vectors", []) + [self.store.load_vectors(cur.round)]
        super()._charge(cur)


def coordinator(cfg, run_dir, **kw):
    base, tok = load_trainable(cfg.fleet.edge_nodes[0].model, cfg.cache_dir)
    return WatchedCoordinator(
        cfg,
        run_dir,
        clients=lambda n: InProcessClient(cfg, n, base, tok),
        evaluator=load_evaluator(cfg, local_hyper(cfg)),
        **kw,
    )


def test_secure_dp_rounds_lower_the_held_out_loss_and_the_coordinator_holds_only_masked_vectors(tmp_path):
    cfg = federation_config(tmp_path)
    coord = coordinator(cfg, tmp_path / "run")

    results = coord.run(3)

    initial = coord.state.initial_loss
    print([f"{r.held_out_loss:.3f}" for r in results], f"from {initial:.3f}", results[-1].epsilon)
    assert results[-1].held_out_loss < initial - 0.05
    assert [r.round for r in results] == [1, 2, 3] and all(r.finished == r.sampled for r in results)
    assert len(coord.seen_vectors) == 3
    for vectors in coord.seen_vectors:  # what it held: masked, uniform over Z_2^64, nothing like an update
        for vector in vectors.values():
            assert vector.dtype == np.uint64 and np.median(np.abs(decode(vector))) > 1e6
    assert not list(coord.store.dir.glob("rounds/*/vectors.npz"))  # dropped at commit
    # the ledger composed three releases per client; far less than three times one round's ε
    one_round = results[0].epsilon["edge-1"]
    assert 0 < one_round <= cfg.privacy.target_epsilon + 0.05
    assert one_round < results[-1].epsilon["edge-1"] < 3 * one_round
    assert len(coord.ledger.releases("edge-1")) == 3
    assert results[-1].user_epsilon is None


def test_user_level_dp_reports_its_own_guarantee_apart_and_releases_no_loss(tmp_path):
    cfg = federation_config(
        tmp_path, clients_per_round=2, min_clients=2, user_dp={"clip_norm": 0.05, "noise_multiplier": 1.0}
    )
    coord = coordinator(cfg, tmp_path / "run")

    results = coord.run(2)

    from edgefleet.train.accounting import Release, composed_epsilon

    expected = composed_epsilon([Release(1.0, 1.0, 1)] * 2, cfg.privacy.delta)  # q = 1: participants are public
    assert results[-1].user_epsilon == pytest.approx(expected)
    assert results[0].user_epsilon < results[1].user_epsilon  # it grows with every round
    assert all(math.isfinite(r.held_out_loss) and math.isnan(r.train_loss) for r in results)  # no loss leaves


def test_a_client_whose_next_round_would_exceed_its_budget_is_not_sampled(tmp_path):
    # Budget for one round of ε=8 and a bit: round 2 must find nobody it may sample.
    cfg = federation_config(tmp_path, clients_per_round=2, min_clients=2)
    cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"client_budget_epsilon": 8.5})})
    coord = coordinator(cfg, tmp_path / "run")

    with pytest.raises(RoundFailed, match="over budget"):
        coord.run(2)

    assert len(coord.completed) == 1
    for node in ("edge-1", "edge-2", "edge-3"):
        assert coord.ledger.epsilon(node) <= 8.5


def test_a_robust_rule_in_the_clear_and_fedadam_under_secure_aggregation_both_train(tmp_path):
    for name, settings in (
        ("median", {"strategy": "fedmedian", "secure_aggregation": False}),
        ("adam", {"strategy": "fedadam", "server_lr": 0.01}),
    ):
        cfg = federation_config(tmp_path / name, **settings)
        coord = coordinator(cfg, tmp_path / name / "run")
        results = coord.run(2)
        assert results[-1].held_out_loss < coord.state.initial_loss, name


def test_a_client_whose_session_cannot_start_is_left_out_of_the_round_not_fatal(tmp_path):
    """edge-3's node is down as the run starts: starting its session raises at once. The sessions are
    started before the base model is evaluated; that failure must not end the run, only leave edge-3 out."""
    from edgefleet.train.jobs import NodeUnavailable

    cfg = federation_config(tmp_path, local_steps=2)
    base, tok = load_trainable(cfg.fleet.edge_nodes[0].model, cfg.cache_dir)

    tried: list[str] = []

    def clients(node):
        tried.append(node)
        if node == "edge-3":
            raise NodeUnavailable("edge-3: no live raylet carries its label")
        return InProcessClient(cfg, node, base, tok)

    coord = Coordinator(cfg, tmp_path / "run", clients=clients, evaluator=load_evaluator(cfg, local_hyper(cfg)))

    (result,) = coord.run(1)

    assert result.sampled == result.finished == ["edge-1", "edge-2"]
    assert tried.count("edge-3") == 2  # at the early start, then again when the round's plan asked it


class _Crashed(BaseException):
    """The coordinator's process died here: nothing after this step ran (BaseException: no handler catches it)."""


class CrashingCoordinator(WatchedCoordinator):
    """Dies right after ``crash_at`` = (round, step) is persisted, as ``crash_after`` does with SIGKILL
    in a real process (tests/integration/test_operations.py kills `edgefleet federate` run as a Ray Job that way)."""

    def __init__(self, *args, crash_at, **kw):
        super().__init__(*args, **kw)
        self.crash_at = crash_at

    def _persist(self, step=None):
        super()._persist(step)
        cur = self.state.current
        if cur and (cur.round, cur.status) == self.crash_at:
            raise _Crashed(self.crash_at)


def test_a_coordinator_that_dies_mid_training_retries_with_fresh_keys_and_charges_nobody_twice(tmp_path):
    """Died after round 1 was charged and aggregated, then again while round 2 trained: each restart
    goes on from disk; round 2 is retried as attempt 2 and every client holds one release per round."""
    cfg = federation_config(tmp_path, clients_per_round=2, min_clients=2, local_steps=4)
    base, tok = load_trainable(cfg.fleet.edge_nodes[0].model, cfg.cache_dir)
    evaluator = load_evaluator(cfg, local_hyper(cfg))

    def start(crash_at=None):
        clients = lambda n: InProcessClient(cfg, n, base, tok)  # noqa: E731 - a new process, new client sessions
        if crash_at is None:
            return Coordinator(cfg, tmp_path / "run", clients=clients, evaluator=evaluator)
        return CrashingCoordinator(cfg, tmp_path / "run", clients=clients, evaluator=evaluator, crash_at=crash_at)

    for crash_at in ((1, "aggregated"), (2, "training")):
        with pytest.raises(_Crashed):
            start(crash_at).run(2)
    coord = start()
    results = coord.run(2)

    assert [(r.round, r.attempt) for r in results] == [(1, 1), (2, 2)]
    assert len(coord.store.dir.joinpath("rounds.jsonl").read_text().splitlines()) == 2  # each round once
    for node in ("edge-1", "edge-2", "edge-3"):
        finished = [r.round for r in results if node in r.finished]
        charged = coord.ledger.db.execute("SELECT round FROM releases WHERE client = ? ORDER BY round", (node,))
        assert [r for (r,) in charged] == finished, node


class LyingClient(InProcessClient):
    """Trains honestly on its node, then lies in its reply to round ``round``'s TrainRequest: ``lie(reply)``."""

    def __init__(self, *args, lies):
        super().__init__(*args)
        self.lies = lies  # round → how that round's Trained reply is altered

    def call(self, request, timeout_s):
        reply = super().call(request, timeout_s)
        lie = next((f for r, f in self.lies.items() if f"/round-{r}/" in getattr(request, "tag", "")), None)
        return lie(reply) if lie and isinstance(reply, Trained) else reply


def liars(cfg, lies):
    """``lies``: (node, round) → how that client alters its update in that round; the others are honest."""
    base, tok = load_trainable(cfg.fleet.edge_nodes[0].model, cfg.cache_dir)
    return lambda n: LyingClient(cfg, n, base, tok, lies={r: f for (node, r), f in lies.items() if node == n})


def test_under_secure_aggregation_a_malformed_update_drops_its_sender_and_honest_clients_pay_once(tmp_path):
    """Round 1: edge-3's masked vector is one number short; round 2: edge-1 names tensors the model
    does not have. Each liar is dropped before the reveal (its update stays masked, it is not
    charged) and the round commits in its first attempt with the others, each charged once."""
    cfg = federation_config(tmp_path, local_steps=2)
    lies = {
        ("edge-3", 1): lambda r: replace(r, payload=r.payload[:-1]),
        ("edge-1", 2): lambda r: replace(r, names=[*r.names[:-1], "lm_head.weight"]),
    }
    evaluator = load_evaluator(cfg, local_hyper(cfg))
    coord = Coordinator(cfg, tmp_path / "run", clients=liars(cfg, lies), evaluator=evaluator)

    first, second = coord.run(2)

    assert (first.attempt, first.finished) == (1, ["edge-1", "edge-2"])
    assert "edge-3's update is refused" in first.stragglers["edge-3"]
    assert "numbers where the layout holds" in first.stragglers["edge-3"]
    assert (second.attempt, second.finished) == (1, ["edge-2", "edge-3"])
    assert "names tensors ['lm_head.weight']" in second.stragglers["edge-1"]
    charged = coord.ledger.db.execute("SELECT client, round, attempt FROM releases ORDER BY client, round")
    assert charged.fetchall() == [("edge-1", 1, 1), ("edge-2", 1, 1), ("edge-2", 2, 1), ("edge-3", 2, 1)]


def test_a_malformed_update_found_on_resume_is_retried_without_its_sender_not_a_crash_loop(tmp_path):
    """In the clear: edge-2 sends NaN and is refused on arrival. Then the coordinator dies after the
    reveal, and edge-1's stored update is found one number short (a run directory written before the
    checks). The resumed round is retried without either and commits with edge-3, instead of
    crashing again on every start."""
    cfg = federation_config(tmp_path, secure_aggregation=False, min_clients=1, min_fraction=0.3, local_steps=2)
    lies = {("edge-2", 1): lambda r: replace(r, payload=np.full_like(r.payload, np.nan))}
    evaluator = load_evaluator(cfg, local_hyper(cfg))
    crashing = CrashingCoordinator(
        cfg, tmp_path / "run", clients=liars(cfg, lies), evaluator=evaluator, crash_at=(1, "revealed")
    )
    with pytest.raises(_Crashed):
        crashing.run(1)
    vectors = crashing.store.load_vectors(1)
    assert sorted(vectors) == ["edge-1", "edge-3"]  # edge-2's NaN never reached the disk
    crashing.store.save_vectors(1, vectors | {"edge-1": vectors["edge-1"][1:]})

    coord = ExclusionsSeen(cfg, tmp_path / "run", clients=liars(cfg, lies), evaluator=evaluator)
    (result,) = coord.run(1)

    assert (result.attempt, result.sampled, result.finished) == (2, ["edge-3"], ["edge-3"])
    assert math.isfinite(result.held_out_loss)
    assert sorted(coord.excluded) == ["edge-1", "edge-2"]
    assert "edge-2's update is refused: it holds NaN" in coord.excluded["edge-2"]
    assert "edge-1's update is refused" in coord.excluded["edge-1"]


class ExclusionsSeen(Coordinator):
    """Keeps the last round's exclusions (the committed result drops them) for the test to read."""

    def _persist(self, step=None):
        super()._persist(step)
        if self.state.current and self.state.current.excluded:
            self.excluded = dict(self.state.current.excluded)


def test_secure_aggregation_with_one_client_per_round_is_refused_with_the_way_out(tmp_path):
    from edgefleet.errors import EdgefleetError

    cfg = federation_config(tmp_path, clients_per_round=1, min_clients=1)

    with pytest.raises(EdgefleetError, match="secure_aggregation needs clients_per_round >= 2"):
        Coordinator(cfg, tmp_path / "run")


class GateHoldingRound1:
    """A registry double whose gate holds round 1's version and keeps every other."""

    def publish(self, result, adapter_path, *, base, hp, base_quality):
        return str(result.round)

    def held(self, version):
        return version == "1"


def test_a_round_the_gate_held_is_published_but_never_built_on(tmp_path):
    """A model is kept only if it is better: round 2 starts from the start, not from held round 1."""
    cfg = federation_config(tmp_path, local_steps=2)
    coord = coordinator(cfg, tmp_path / "run", publisher=GateHoldingRound1())
    loaded: list[int] = []
    load = coord.store.load_adapter
    coord.store.load_adapter = lambda r: loaded.append(r) or load(r)

    coord.run(2)

    assert loaded.count(1) == 1, loaded  # round 1's global: evaluated, never trained or aggregated on
    assert coord.state.kept_round == 2 and [r.round for r in coord.completed] == [1, 2]
