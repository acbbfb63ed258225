"""Federated rounds on the session fleet: each client trains in its own Ray Train session on its own
labelled node. One run of two rounds shows the two ways a client goes missing (each a Train session
start or two here, so they share the run):

- round 1: edge-3's Train worker is SIGKILLed while the round trains. The round commits with the
  other two (edge-3's pairwise masks removed through its Shamir shares) and edge-3 is not charged;
- round 2: edge-3 is back in a new session and finishes, while edge-1 misses the round deadline.
  The straggler is dropped and secure aggregation still unmasks the survivors' sum.

Between rounds edge-2's session is reused: the same Train worker process serves both rounds.
"""

import os
import signal
import threading
import time

import pytest

from edgefleet.federation.coordinator import Coordinator
from edgefleet.train.data import write_demo_shards

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_killed_client_is_dropped_then_rejoins_and_a_straggler_is_dropped_at_the_deadline(
    fleet, fleet_config, tmp_path
):
    import ray
    from ray.util.state import list_actors

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
    # Round 1: edge-3 lingers before training, so the kill lands while the round is in its training
    # phase. Round 2: edge-1 is a slow site, past the 12 s deadline (the others train in ~2 s).
    delays = {1: {"edge-3": 8.0}, 2: {"edge-1": 18.0}}
    current_delays = dict(delays[1])
    worker_pids: list[dict[str, int]] = []  # after each round: client → its live Train worker's pid

    def train_worker_pids() -> dict[str, int]:
        workers = list_actors(
            address=fleet.dashboard_url, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        )
        client_of = {n.ray_node_id: n.node_id for n in fleet.nodes() if n.alive}
        return {client_of[w.node_id]: w.pid for w in workers if w.node_id in client_of}

    def next_round_delays(result, _version) -> None:
        worker_pids.append(train_worker_pids())
        current_delays.clear()
        current_delays.update(delays.get(result.round + 1, {}))

    coord = Coordinator(cfg, tmp_path / "run", client_delays=current_delays, on_round=next_round_delays)
    edge3 = next(n.ray_node_id for n in fleet.nodes() if n.node_id == "edge-3" and n.alive)
    killed: list[int] = []

    def kill_edge3_worker_while_training() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            current = coord.state.current
            if current is not None and (current.round, current.status) == (1, "training"):
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
    print([(r.round, r.finished, r.stragglers, round(r.held_out_loss, 3), round(r.wall_s, 1)) for r in results])
    assert killed, "edge-3's Train worker was never seen training"
    assert first.sampled == ["edge-1", "edge-2", "edge-3"] and first.finished == ["edge-1", "edge-2"]
    assert "stopped" in first.stragglers["edge-3"], first.stragglers  # dropped for its death, not the deadline
    assert first.epsilon["edge-3"] == 0.0 and first.epsilon["edge-1"] > 0
    # edge-3 rejoined in a new session on its own node; edge-1 missed the deadline
    assert second.finished == ["edge-2", "edge-3"] and second.ran_on["edge-3"] == "edge-3"
    assert "no answer within 12 s" in second.stragglers["edge-1"]
    assert results[-1].held_out_loss < coord.state.initial_loss
    # a dropped client is never charged for a round it did not finish; finishers are charged once per round
    rounds_finished = {n: sum(n in r.finished for r in results) for n in ("edge-1", "edge-2", "edge-3")}
    assert rounds_finished == {"edge-1": 1, "edge-2": 2, "edge-3": 1}
    assert {n: len(coord.ledger.releases(n)) for n in rounds_finished} == rounds_finished
    # each update was computed on the client's own node, where its data lives
    assert all(r.ran_on == {c: c for c in r.finished} for r in results)
    assert len(coord.store.dir.joinpath("rounds.jsonl").read_text().splitlines()) == 2
    # a session serves round after round: edge-2's worker is the same process; edge-3's is a new one
    assert worker_pids[0]["edge-2"] == worker_pids[1]["edge-2"], worker_pids
    assert worker_pids[1]["edge-3"] not in (killed[0], worker_pids[0].get("edge-3")), worker_pids
    assert ray.is_initialized()
