"""How a training session's caller picks its own answer from the results queue (no Ray: the same
``get(block, timeout)`` as ``ray.util.queue.Queue``)."""

import queue

import pytest

from edgefleet.train.jobs import await_answer


def test_a_stragglers_late_answer_is_skipped_not_taken_for_this_tasks():
    results = queue.Queue()
    results.put({"seq": 1, "vector": "round 1's, after its caller gave up"})
    results.put({"seq": 2, "vector": "this round's"})

    assert await_answer(results.get, 2, timeout_s=1, who="edge-1")["vector"] == "this round's"
    assert results.empty()


def test_no_answer_in_time_names_the_client_and_the_wait():
    results = queue.Queue()
    results.put({"seq": 1})  # only an older task's answer comes

    with pytest.raises(TimeoutError, match="edge-3 did not answer within 0.2 s"):
        await_answer(results.get, 2, timeout_s=0.2, who="edge-3")


def test_a_stopped_session_says_why():
    results = queue.Queue()
    results.put({"stopped": True})

    with pytest.raises(RuntimeError, match="session on edge-2 stopped: worker killed"):
        await_answer(results.get, 5, timeout_s=1, who="edge-2", error=lambda: "worker killed")
