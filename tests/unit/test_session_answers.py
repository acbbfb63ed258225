"""How a training session's caller picks its own answer from the answers queue (no Ray: the same
``get(block, timeout)`` as the session's mailbox). Answers are typed envelopes (train/mailbox.py)."""

import queue

import pytest

from edgefleet.train.jobs import await_answer
from edgefleet.train.mailbox import SessionReply, SessionStopped


def test_a_stragglers_late_answer_is_skipped_not_taken_for_this_tasks():
    results = queue.Queue()
    results.put(SessionReply(1, reply="round 1's, after its caller gave up"))
    results.put(SessionReply(2, reply="this round's"))

    assert await_answer(results.get, 2, timeout_s=1, who="edge-1") == SessionReply(2, reply="this round's")
    assert results.empty()


def test_no_answer_in_time_names_the_client_and_the_wait():
    results = queue.Queue()
    results.put(SessionReply(1, reply=None))  # only an older task's answer comes

    with pytest.raises(TimeoutError, match="edge-3 did not answer within 0.2 s"):
        await_answer(results.get, 2, timeout_s=0.2, who="edge-3")


def test_a_stopped_session_says_why():
    results = queue.Queue()
    results.put(SessionStopped())

    with pytest.raises(RuntimeError, match="session on edge-2 stopped: worker killed"):
        await_answer(results.get, 5, timeout_s=1, who="edge-2", error=lambda: "worker killed")


def test_a_reply_holds_either_the_handlers_reply_or_its_error_never_both():
    failed = SessionReply(3, error="ValueError: no keys")

    assert failed.failed and not SessionReply(3, reply=None).failed
    with pytest.raises(ValueError, match="either a reply or an error"):
        SessionReply(3, reply="x", error="y")
