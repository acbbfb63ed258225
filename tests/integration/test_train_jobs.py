"""Ray Train jobs on the session fleet: a private local update runs on the client's own labelled
node, returns through a checkpoint, carries the accountant forward, and trains with DPDDP on 2 workers."""

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


def test_a_local_update_runs_on_its_node_and_comes_back_through_a_checkpoint(train_config):
    first = run_local_update(train_config, "edge-2", hp=HP, block_size=64, cpus_per_worker=0.25)
    second = run_local_update(
        train_config,
        "edge-2",
        hp=HP,
        block_size=64,
        cpus_per_worker=0.25,
        adapter=first.update.adapter,
        accountant_state=first.update.accountant_state,
    )

    print(f"job wall {first.wall_s:.1f} s, of which training {first.train_s:.1f} s")
    assert labels_of(first.ran_on)[NODE_LABEL] == "edge-2"
    u = first.update
    assert u.private and u.steps == HP.max_steps and 0 < u.epsilon <= train_config.privacy.target_epsilon + 0.05
    assert u.delta and all(math.isfinite(float(v.abs().sum())) for v in u.delta.values())
    # The accountant's state went out with the first update and came back in: ε adds up, never resets.
    assert second.update.epsilon_total > first.update.epsilon_total
    assert first.wall_s > first.train_s  # the job's own cost is measured, not hidden


def test_two_workers_on_one_node_train_together_with_dpddp(train_config):
    result = run_local_update(train_config, "edge-1", hp=HP, block_size=64, workers=2, cpus_per_worker=0.25)

    assert labels_of(result.ran_on)[NODE_LABEL] == "edge-1"
    assert result.ranks_in_sync and result.update.epsilon > 0 and math.isfinite(result.update.loss)


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
