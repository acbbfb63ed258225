"""The run's state survives JSON as the run store writes it, and a run written before the types resumes."""

import json
import math

from edgefleet.federation.round_state import ClientReport, RoundResult, RoundState, RunState
from edgefleet.federation.secagg import AdvertisedKeys, RevealedShare
from edgefleet.train.accounting import Release


def revealed_round():
    return RoundState(
        2,
        1,
        "revealed",
        sampled=["edge-1", "edge-2"],
        tag="run/round-2/attempt-1",
        roster=[AdvertisedKeys("edge-1", b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)],
        finished=["edge-1", "edge-2"],
        revealed={"edge-1": [RevealedShare("edge-2", "b", 1, 2**300)]},
        threshold=2,
        names=["b"],
        noise_seed=7,
        clients={"edge-1": ClientReport(Release(1.0, 0.1, 5), 1.5, 2.0, "edge-1")},
    )


def result(round_id=1):
    return RoundResult(
        round_id, 1, ["edge-1"], ["edge-1"], {}, math.nan, 2.0, math.exp(2.0), {"edge-1": 1.0}, None, 3.0
    )


def test_a_run_in_the_middle_of_a_round_comes_back_equal_from_its_json():
    state = RunState("run", {"strategy": "fedavg"}, [result()], revealed_round(), 3.5, None, [Release(1.0, 1.0, 1)])

    back = RunState.from_json(json.loads(json.dumps(state.to_json())))

    assert back.current == state.current and back.completed[0].round == 1
    assert back.user_dp_history == state.user_dp_history and back.initial_loss == 3.5


def test_a_committed_round_keeps_its_result_and_nothing_that_could_rebuild_the_sum():
    committed = RoundState.committed(result(2))

    data = committed.to_json()

    assert set(data) == {"round", "attempt", "status", "result"} and data["status"] == "committed"
    assert RoundState.from_json(json.loads(json.dumps(data))).result.round == 2
    assert not committed.asks_clients and revealed_round().asks_clients is False
    assert RoundState(1, 1, "training").asks_clients


def test_a_state_file_written_before_the_types_existed_still_loads():
    old = {
        "run_id": "run",
        "settings": {},
        "completed": [],
        "initial_loss": 4.0,
        "user_dp_history": [[1.0, 1.0, 1]],
        "current": {
            "round": 1,
            "attempt": 1,
            "status": "revealed",
            "sampled": ["edge-1"],
            "tag": "t",
            "excluded": {},
            "failures": [],
            "unavailable": {},
            "over_budget": [],
            "phases": {"sample": 0.1},
            "wall_started": 1.0,
            "roster": [{"client": "edge-1", "c_pk": "01", "s_pk": "02", "b_commit": "03"}],
            "finished": ["edge-1"],
            "stragglers": {},
            "revealed": {"edge-1": [{"owner": "edge-1", "kind": "b", "x": 1, "y": 5}]},
            "threshold": 2,
            "names": ["b"],
            "noise_seed": 9,
            "rejected": {"edge-1": []},
            "clients": {
                "edge-1": {
                    "release": {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 3},
                    "train_s": 1.0,
                    "step_s": 2.0,
                    "ran_on": None,
                }
            },
        },
    }

    state = RunState.from_json(old)

    assert state.initial_quality is None and state.user_dp_history == [Release(1.0, 1.0, 1)]
    assert state.current.roster[0].c_pk == b"\x01" and state.current.revealed["edge-1"][0].y == 5
    assert state.current.clients["edge-1"].release == Release(1.0, 0.1, 3)
