"""The node-side feedback stores: bounded in memory, durable and pruned on disk."""

from __future__ import annotations

from dataclasses import replace

from edgefleet.platform.feedback import Answer, FeedbackStore, Rating, RecentAnswers, Tally
from edgefleet.train.data import training_samples


def _answer(i: int, at: float = 0.0, text: str = "an answer") -> Answer:
    return Answer(f"r{i}", "site-a", f"question {i}?", text, "v1", at)


def test_recent_answers_are_bounded_by_age_count_and_bytes():
    recent = RecentAnswers(keep_s=10, max_answers=3, max_bytes=10_000)
    for i in range(5):
        recent.add(_answer(i, at=i))
    assert len(recent) == 3 and recent.get("r1", now=4) is None and recent.get("r4", now=4) is not None
    assert recent.get("r4", now=15) is None  # expired
    small = RecentAnswers(keep_s=10, max_answers=100, max_bytes=200)
    for i in range(5):
        small.add(_answer(i, text="x" * 60))
    assert 1 <= len(small) < 5 and small.get("r4", now=0) is not None
    small.add(_answer(9, text="y" * 500))  # bigger than the whole budget: not kept, nothing evicted for it
    assert small.get("r9", now=0) is None and small.get("r4", now=0) is not None


def test_only_the_caller_who_asked_may_rate_an_answer_and_a_reused_id_does_not_take_it_over():
    recent = RecentAnswers(keep_s=10, max_answers=10, max_bytes=10_000)
    recent.add(Answer("r1", "site-a", "mine?", "yes", "v1", at=0.0, caller="alice"))
    recent.add(Answer("r1", "site-a", "hijack?", "no", "v1", at=1.0, caller="mallory"))
    assert recent.get("r1", now=2, caller="mallory") is None
    assert recent.get("r1", now=2, caller="alice").question == "mine?"


def test_the_store_keeps_what_to_learn_replaces_a_changed_mind_and_prunes(tmp_path):
    path = tmp_path / "node" / "feedback.sqlite"
    store = FeedbackStore(path, retention_days=1, max_rows=3)
    store.add(_answer(1), Rating(good=True), now=100_000)
    store.add(_answer(2), Rating(good=False), now=100_001)  # bad, no correction: nothing to learn
    store.add(_answer(3), Rating(good=False, correction="the right one"), now=100_002)
    assert store.examples(now=100_002) == [("question 1?", "an answer"), ("question 3?", "the right one")]
    store.add(_answer(1), Rating(good=False, correction="changed"), now=100_003)  # a user changed their mind
    reopened = FeedbackStore(path, retention_days=1)  # a restarted node
    assert ("question 1?", "changed") in reopened.examples(now=100_003)
    assert reopened.examples(now=100_000 + 3 * 86_400) == []  # past retention: never read, even unpruned
    store.add(_answer(4), Rating(good=True), now=100_004)
    assert store.counts() == (1, 2)  # at most 3 rows: the oldest went
    store.add(_answer(5), Rating(good=True), now=100_004 + 2 * 86_400)  # a day past retention
    assert store.counts() == (1, 0)


def test_a_node_trains_on_its_feedback_and_documents_as_chat_with_the_loss_on_answers(tmp_path):
    from edgefleet.platform.chat import IGNORE
    from edgefleet.platform.models import build_tiny_tokenizer

    (tmp_path / "docs.txt").write_text("Plain documentation text. " * 20)
    FeedbackStore(tmp_path / "feedback.sqlite").add(_answer(1), Rating(good=False, correction="Fixed."))
    tok = build_tiny_tokenizer()
    samples = training_samples(tmp_path, tok, 96)
    text_rows = [r for r in samples if (r[1] == r[0]).all()]
    chat_rows = [r for r in samples if (r[1] == IGNORE).any()]
    assert samples.dim() == 3 and text_rows and len(chat_rows) == 1
    learnt = tok.decode([t for t in chat_rows[0][1].tolist() if t != IGNORE])
    assert learnt.startswith("Fixed.") and "question 1?" not in learnt  # the answer only, not the prompt


def test_a_tally_counts_ratings_since_a_time_by_the_version_that_answered(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    store.add(_answer(0), Rating(good=False), now=5.0)  # before the window
    store.add(_answer(1), Rating(good=True), now=10.0)
    store.add(replace(_answer(2), model_version="v2"), Rating(good=False, correction="x"), now=11.0)
    store.add(replace(_answer(3), model_version="v2"), Rating(good=True), now=12.0)
    assert store.tally(since=10.0) == {"v1": Tally(good=1, bad=0), "v2": Tally(good=1, bad=1)}
    assert store.tally(since=13.0) == {} and (Tally(1, 2) + Tally(3, 4)).total == 10


def test_another_caller_reusing_a_request_id_never_replaces_a_stored_rating(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    alice = replace(_answer(1), caller="alice")
    store.add(alice, Rating(good=False, correction="alice's fix"), now=1.0)
    store.add(replace(alice, caller="bob", question="bob's question"), Rating(good=False, correction="junk"), now=2.0)
    store.add(alice, Rating(good=False, correction="alice's better fix"), now=3.0)  # alice changed her mind
    assert sorted(store.examples(now=4.0)) == [("bob's question", "junk"), ("question 1?", "alice's better fix")]


def test_an_exchange_too_big_to_learn_from_is_not_kept():
    from edgefleet.platform.feedback import MAX_EXCHANGE_BYTES

    recent = RecentAnswers(keep_s=10, max_answers=10, max_bytes=1 << 30)
    recent.add(replace(_answer(1), site="s" * MAX_EXCHANGE_BYTES))  # the site counts too
    assert recent.get("r1", now=0) is None
