"""Federated rounds on the session fleet: each client trains in its own Ray Train session on its own
labelled node, a straggler is dropped at the round deadline, and secure aggregation still unmasks
the survivors' sum (the straggler's pairwise masks are removed through its Shamir-shared key)."""

import pytest

from edgefleet.federation.coordinator import Coordinator
from edgefleet.train.data import write_demo_shards

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_rounds_on_the_fleet_drop_a_straggler_and_still_unmask_the_survivors_sum(fleet, fleet_config, tmp_path):
    federation = fleet_config.federation.model_copy(
        update={
            "clients_per_round": 3,
            "min_clients": 2,
            "round_timeout_s": 12.0,
            "local_steps": 6,
            "batch_size": 32,
            "block_size": 64,
            "lr": 0.02,
            "held_out_blocks": 64,
        }
    )
    cfg = fleet_config.model_copy(update={"cache_dir": tmp_path / "cache", "federation": federation})
    write_demo_shards(cfg)
    coord = Coordinator(cfg, tmp_path / "run", client_delays={"edge-3": 20.0})  # edge-3 is a slow site

    results = coord.run(2)

    first = results[0]
    print([(r.round, r.finished, r.stragglers, round(r.held_out_loss, 3), round(r.wall_s, 1)) for r in results])
    assert first.sampled == ["edge-1", "edge-2", "edge-3"] and first.finished == ["edge-1", "edge-2"]
    assert "no answer within 12 s" in first.stragglers["edge-3"]
    assert results[-1].held_out_loss < coord.state["initial_loss"]
    # a straggler is never charged for a round it did not finish; finishers are charged once per round
    rounds_finished = {n: sum(n in r.finished for r in results) for n in ("edge-1", "edge-2", "edge-3")}
    assert {n: len(coord.ledger.releases(n)) for n in rounds_finished} == rounds_finished
    assert first.epsilon["edge-3"] == 0.0 and first.epsilon["edge-1"] > 0
    # each update was computed on the client's own node, where its data lives
    assert all(r.ran_on == {c: c for c in r.finished} for r in results)
    assert len(coord.store.dir.joinpath("rounds.jsonl").read_text().splitlines()) == 2


def test_a_client_whose_train_job_is_killed_mid_round_is_dropped_then_rejoins(fleet, fleet_config, tmp_path):
    """edge-3's Train worker is SIGKILLed while the round trains: the round commits with the other two
    (its pairwise masks removed through its Shamir shares), edge-3 is not charged, and the next round
    starts it a new session and takes it back."""
    import os
    import signal
    import threading
    import time

    import ray
    from ray.util.state import list_actors

    federation = fleet_config.federation.model_copy(
        update={
            "clients_per_round": 3,
            "min_clients": 2,
            "round_timeout_s": 90.0,
            "local_steps": 4,
            "batch_size": 32,
            "block_size": 64,
            "lr": 0.02,
            "held_out_blocks": 32,
        }
    )
    cfg = fleet_config.model_copy(update={"cache_dir": tmp_path / "cache", "federation": federation})
    write_demo_shards(cfg)
    # edge-3 lingers before training, so the kill lands while the round is in its training phase
    coord = Coordinator(cfg, tmp_path / "run", client_delays={"edge-3": 8.0})
    edge3 = next(n.ray_node_id for n in fleet.nodes() if n.node_id == "edge-3" and n.alive)
    killed: list[int] = []

    def kill_edge3_worker_while_training() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            current = coord.state.get("current") or {}
            if current.get("round") == 1 and current.get("status") == "training":
                workers = list_actors(
                    address=fleet.dashboard_url,
                    filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                )
                pids = [w.pid for w in workers if w.node_id == edge3]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
            time.sleep(0.2)

    killer = threading.Thread(target=kill_edge3_worker_while_training, daemon=True)
    killer.start()
    results = coord.run(2)  # closes its sessions when done
    killer.join(timeout=5)

    first, second = results
    print([(r.round, r.finished, r.stragglers) for r in results])
    assert killed, "edge-3's Train worker was never seen training"
    assert first.finished == ["edge-1", "edge-2"] and "edge-3" in first.stragglers
    assert first.epsilon["edge-3"] == 0.0 and len(coord.ledger.releases("edge-3")) == 1  # charged for round 2 only
    assert "edge-3" in second.finished and second.ran_on["edge-3"] == "edge-3"
    assert ray.is_initialized()
