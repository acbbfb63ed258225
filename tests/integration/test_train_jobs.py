"""Ray Train on the session fleet: a client's local update runs on its own labelled node, trains with
DPDDP on 2 workers and carries the accountant forward from job to job."""

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


def test_a_job_on_its_node_trains_with_dpddp_and_carries_the_accountant(train_config):
    """Two workers on edge-2 train together with DPDDP, and the accountant state that went in (an
    earlier update's, made here) carries on from job to job: ε adds up, never resets. This is what
    `edgefleet train local` runs (tests/e2e/test_train_cli.py); the long-lived sessions that serve a
    federation's rounds are tests/integration/test_federation_ray.py's."""
    from edgefleet.platform.models import load_trainable
    from edgefleet.train.data import chunk_for_causal_lm, node_data_dir, read_texts
    from edgefleet.train.dp import local_update

    base, tok = load_trainable(train_config.fleet.edge_nodes[0].model, train_config.cache_dir)
    blocks = chunk_for_causal_lm(read_texts(node_data_dir(train_config, train_config.fleet.edge("edge-2"))), tok, 64)
    earlier = local_update(base, None, blocks, train_config.privacy, HP)

    def job(before):
        return run_local_update(
            train_config,
            "edge-2",
            adapter=before.adapter,
            hp=HP,
            workers=2,
            accountant_state=before.accountant_state,
            block_size=64,
            cpus_per_worker=0.25,
        )

    first = job(earlier)
    second = job(first.update)

    for result in (first, second):
        assert labels_of(result.ran_on)[NODE_LABEL] == "edge-2"
        # the process group the update trained in is the workers asked for; DPDDP left both with the same weights
        assert result.workers == result.world_size == 2 and result.ranks_in_sync
        u = result.update
        assert u.private and u.steps == HP.max_steps and 0 < u.epsilon <= train_config.privacy.target_epsilon + 0.05
        assert u.delta and all(math.isfinite(float(v.abs().sum())) for v in u.delta.values()) and math.isfinite(u.loss)
    assert first.update.epsilon_total > max(earlier.epsilon_total, first.update.epsilon)  # the state went in
    assert second.update.epsilon_total > first.update.epsilon_total  # and carried on


def test_a_session_answers_typed_messages_round_after_round_and_a_failed_step_does_not_end_it(train_config):
    """The federation's transport: a long-lived session on edge-2 answers the participant's typed
    requests through its mailbox; a request that raises on the node comes back as StepFailed."""
    from edgefleet.federation.messages import Plan, PlanRequest, RevealRequest
    from edgefleet.federation.participant import handle
    from edgefleet.train.jobs import LocalTrainingSession, StepFailed

    with LocalTrainingSession(train_config, "edge-2", handler=handle, block_size=64, cpus_per_worker=0.25) as session:
        first = session.call(PlanRequest(HP), timeout_s=300)  # the session's start-up included
        with pytest.raises(StepFailed, match="no secure-aggregation keys"):
            session.call(RevealRequest("run/round-1/attempt-1", {}, ["edge-2"], []), timeout_s=60)
        second = session.call(PlanRequest(HP), timeout_s=60)
        assert session.alive

    assert isinstance(first, Plan) and first == second and first.release.noise_multiplier > 0


def test_an_unknown_node_is_named(train_config):
    with pytest.raises(ValueError, match="unknown edge node 'edge-9'"):
        run_local_update(train_config, "edge-9")
