"""Ray Train jobs on the session fleet: a private local update runs on the client's own labelled
node, trains with DPDDP on 2 workers, returns through a checkpoint and carries the accountant forward;
a session serves several rounds from one Train run."""

import math

import pytest

ray = pytest.importorskip("ray")

from edgefleet.platform.topology import NODE_LABEL  # noqa: E402
from edgefleet.train.data import write_demo_shards  # noqa: E402
from edgefleet.train.dp import LocalHyper  # noqa: E402
from edgefleet.train.jobs import run_local_update  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
HP = LocalHyper(lr=1e-2, batch_size=32, physical_batch=16, max_steps=4, epochs=10.0)


@pytest.fixture(scope="module")
def train_config(fleet, fleet_config, tmp_path_factory):
    cfg = fleet_config.model_copy(update={"cache_dir": tmp_path_factory.mktemp("train-cache")})
    write_demo_shards(cfg)
    return cfg


def labels_of(ray_node_id: str) -> dict:
    return next(n.get("Labels") or {} for n in ray.nodes() if n["NodeID"] == ray_node_id)


def test_a_local_update_runs_on_its_node_with_dpddp_and_comes_back_through_a_checkpoint(train_config):
    """One Train job (each costs ~12 s of start-up here) shows it all: two workers on edge-2 train
    together with DPDDP, the update and the accountant come back in rank 0's checkpoint, and the
    accountant state that went in (an earlier update's, made here) carries on: ε adds up, never resets."""
    from edgefleet.platform.models import load_trainable
    from edgefleet.train.data import chunk_for_causal_lm, node_data_dir, read_texts
    from edgefleet.train.dp import local_update

    base, tok = load_trainable(train_config.fleet.edge_nodes[0].model, train_config.cache_dir)
    blocks = chunk_for_causal_lm(read_texts(node_data_dir(train_config, train_config.fleet.edge("edge-2"))), tok, 64)
    earlier = local_update(base, None, blocks, train_config.privacy, HP)

    result = run_local_update(
        train_config,
        "edge-2",
        hp=HP,
        block_size=64,
        workers=2,
        cpus_per_worker=0.25,
        adapter=earlier.adapter,
        accountant_state=earlier.accountant_state,
    )

    print(f"job wall {result.wall_s:.1f} s, of which training {result.train_s:.1f} s")
    assert labels_of(result.ran_on)[NODE_LABEL] == "edge-2"
    assert result.workers == 2 and result.ranks_in_sync  # DPDDP left both ranks with the same weights
    u = result.update
    assert u.private and u.steps == HP.max_steps and 0 < u.epsilon <= train_config.privacy.target_epsilon + 0.05
    assert u.delta and all(math.isfinite(float(v.abs().sum())) for v in u.delta.values()) and math.isfinite(u.loss)
    assert u.epsilon_total > max(earlier.epsilon_total, u.epsilon)  # the state that went in carried on
    assert result.wall_s > result.train_s  # the job's own cost is measured, not hidden


def test_an_unknown_node_is_named(train_config):
    with pytest.raises(ValueError, match="unknown edge node 'edge-9'"):
        run_local_update(train_config, "edge-9")


def test_a_session_serves_several_rounds_from_one_train_run_for_clients_side_by_side(train_config):
    from concurrent.futures import ThreadPoolExecutor

    from edgefleet.train.jobs import LocalTrainingSession

    sessions = [
        LocalTrainingSession(train_config, n, block_size=64, cpus_per_worker=0.25) for n in ("edge-1", "edge-3")
    ]
    try:
        with ThreadPoolExecutor(2) as pool:  # both clients train at the same time
            first = list(pool.map(lambda s: s.update(None, HP), sessions))
            second = list(pool.map(lambda s, f: s.update(f.update.adapter, HP), sessions, first))
    finally:
        for s in sessions:
            s.close()

    for a, b, node in zip(first, second, ("edge-1", "edge-3"), strict=True):
        assert labels_of(a.ran_on)[NODE_LABEL] == node
        assert a.worker_pid == b.worker_pid  # the same Train worker served both rounds: no new job
        assert b.update.epsilon_total > a.update.epsilon_total  # the accountant carried on in the worker
