"""The quality judge's scores on a tiny model: the base diverges from itself by nothing, and the
answer-match rate counts a greedy answer as right exactly when a user would rate it good."""

from __future__ import annotations

import math

import pytest

from edgefleet.eval.scores import Quality, QualityJudge
from edgefleet.platform.chat import ChatExample
from edgefleet.platform.models import build_tiny

QUESTIONS = ("What is a list?", "What is a dict?", "What is a set?")


def test_answers_that_match_the_reference_count_per_site_and_overall():
    base, tok = build_tiny(0)
    probe = QualityJudge(base, tok, {"any": [ChatExample(q, "x") for q in QUESTIONS]})
    greedy = probe._answers(base, list(QUESTIONS), 48)  # what the model answers, greedily
    sites = {
        "own-words": [ChatExample(q, a) for q, a in zip(QUESTIONS, greedy, strict=True) if a.strip()],
        "other-words": [ChatExample(q, "zebra quartz umbrella") for q in QUESTIONS],
    }
    assert sites["own-words"], "the tiny model answered nothing to compare with"
    q = QualityJudge(base, tok, sites).score(base)

    by_site = {s.site: s for s in q.per_site}
    assert by_site["own-words"].answer_match == 1.0 and by_site["other-words"].answer_match == 0.0
    own = len(sites["own-words"])
    assert q.answer_match == pytest.approx(own / (own + len(QUESTIONS)))
    assert by_site["own-words"].task_score > by_site["other-words"].task_score  # its own words are likelier
    assert q.divergence == pytest.approx(0.0, abs=1e-6)  # the base against itself
    assert Quality.from_json({**q.__dict__, "per_site": [s.__dict__ for s in q.per_site]}) == q


def test_a_judge_without_questions_is_refused():
    base, tok = build_tiny(0)
    with pytest.raises(ValueError, match="held-out questions"):
        QualityJudge(base, tok, {"edge-1": []})


def test_a_site_whose_questions_cannot_be_rendered_is_reported_not_fatal():
    base, tok = build_tiny(0)
    sites = {"fits": [ChatExample(q, "An answer.") for q in QUESTIONS], "too-long": [ChatExample("word " * 400, "x")]}
    q = QualityJudge(base, tok, sites, block_size=64).score(base)
    by_site = {s.site: s for s in q.per_site}
    assert math.isnan(by_site["too-long"].task_score) and math.isfinite(q.task_score)
    assert q.task_score == pytest.approx(by_site["fits"].task_score) and q.answer_match == by_site["fits"].answer_match
    with pytest.raises(ValueError, match="none of the held-out questions fits"):
        QualityJudge(base, tok, {"too-long": sites["too-long"]}, block_size=64).score(base)


def test_the_gate_checks_facts_exactly_as_a_node_answers_them():
    """The regression guard's fact answers are what an edge node serving the candidate answers to a
    lone request: the same int8 form, the same prompt, greedy. (Batched and left-padded they were
    not: int8 activation scales span the batch, and a version kept "Paris" only in the batch.)"""
    import asyncio

    from edgefleet.config import ModelSpec
    from edgefleet.eval.scores import FACT_ANSWER_TOKENS, FACTS, served_form
    from edgefleet.platform.engine import GenerationEngine, GenRequest
    from edgefleet.platform.models import load_model

    node = GenerationEngine(load=lambda: load_model(ModelSpec(source="tiny", quantization="int8")))
    qs = [q for q, _ in FACTS]

    async def served_answers() -> list[str]:
        asked = [GenRequest(f"q{i}", [{"role": "user", "content": q}], FACT_ANSWER_TOKENS) for i, q in enumerate(qs)]
        return [(await node.complete(r)).finished.text for r in asked]  # one at a time

    base, tok = build_tiny(0)
    judge = QualityJudge(base, tok, {"any": [ChatExample(q, "x") for q in QUESTIONS]}, served=served_form("int8"))
    gate_answers = judge._lone_answers(served_form("int8")(base), qs)

    assert [a.strip() for a in gate_answers] == [a.strip() for a in asyncio.run(served_answers())]


def test_the_guard_judges_facts_on_lone_answers_end_to_end(monkeypatch):
    """Through score(): with facts whose right answer is what the int8 model says alone, the base
    keeps every one. Judged on batched answers (which int8 changes) some would count as lost."""
    import re

    from edgefleet.eval import scores
    from edgefleet.eval.scores import FACTS, served_form

    base, tok = build_tiny(0)
    judge = QualityJudge(base, tok, {"any": [ChatExample(q, "x") for q in QUESTIONS]}, served=served_form("int8"))
    served, questions = served_form("int8")(base), [q for q, _ in FACTS]
    alone, batched = judge._lone_answers(served, questions), judge._answers(served, questions)
    assert alone != batched, "int8 answered the same alone and batched: the test cannot tell them apart"
    facts = tuple((q, re.escape(a.strip()[:16])) for q, a in zip(questions, alone, strict=True))
    monkeypatch.setattr(scores, "FACTS", facts)

    q = judge_again(base, tok).score(base)

    assert (q.facts_kept, q.facts_total, q.facts_lost) == (len(questions), len(questions), ())


def judge_again(base, tok):
    from edgefleet.eval.scores import served_form

    return QualityJudge(base, tok, {"any": [ChatExample(q, "x") for q in QUESTIONS]}, served=served_form("int8"))
