"""The batching engine without Ray: streams, batches, continues, and never leaves a stream hanging."""

from __future__ import annotations

import asyncio

import pytest

from edgefleet.config import ModelSpec
from edgefleet.platform.engine import GenerationEngine, GenRequest
from edgefleet.platform.events import Completed, Delta, EngineEvent, Failed, Finished, Started
from edgefleet.platform.models import load_model


@pytest.fixture(scope="module")
def engine() -> GenerationEngine:
    return GenerationEngine(load=lambda: load_model(ModelSpec(source="tiny", quantization="none")))


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def run(coro):
    return asyncio.run(coro)


async def events_of(engine: GenerationEngine, req: GenRequest) -> list[EngineEvent]:
    return [e async for e in engine.stream(req)]


def test_stream_is_start_deltas_end_and_deltas_add_up(engine):
    events = run(events_of(engine, GenRequest("a", chat("hello"), max_new_tokens=12)))

    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == events[-1].text


def test_batched_answers_equal_solo_answers(engine):
    async def both():
        solo = await engine.complete(GenRequest("s", chat("prompt 3"), max_new_tokens=10))
        together = await asyncio.gather(
            *(engine.complete(GenRequest(f"b{i}", chat(f"prompt {i}"), max_new_tokens=10)) for i in range(6))
        )
        return solo, together

    solo, together = run(both())

    assert together[3].finished.text == solo.finished.text
    assert max(r.started.batch_size for r in together) > 1


def test_a_batch_that_fails_closes_every_stream_with_an_error(engine):
    bad = GenRequest("x", chat("hi"), max_new_tokens=4, temperature=1.0, seed=2**70)  # torch refuses this seed

    result = run(asyncio.wait_for(engine.complete(bad), timeout=30))  # must not hang

    assert isinstance(result, Failed) and result.code == "INTERNAL"
    assert isinstance(run(engine.complete(GenRequest("y", chat("hi"), max_new_tokens=2))), Completed)  # still serving


def test_prefix_continues_without_repeating_the_text_already_sent(engine):
    full = run(engine.complete(GenRequest("f", chat("continue me"), max_new_tokens=16)))
    head = full.finished.text[:5]

    rest = run(engine.complete(GenRequest("c", chat("continue me"), max_new_tokens=16, prefix=head)))

    assert isinstance(rest, Completed) and not rest.finished.text.startswith(head)


def test_earliest_stop_sequence_wins(engine):
    text = run(engine.complete(GenRequest("t", chat("stops"), max_new_tokens=24))).finished.text
    if len(set(text)) < 6:
        pytest.skip("tiny model output too repetitive for two distinct stops")
    early, late = text[2], text[6]

    cut = run(engine.complete(GenRequest("u", chat("stops"), max_new_tokens=24, stop=[late, early])))

    assert cut.finished.finish_reason == "stop" and cut.finished.text == text[: min(text.find(early), text.find(late))]


def test_invalid_requests_are_errors_naming_the_field(engine):
    too_long = run(events_of(engine, GenRequest("l", chat("x" * 600), max_new_tokens=8)))
    no_tokens = run(events_of(engine, GenRequest("n", chat("x"), max_new_tokens=0)))

    assert too_long == [Failed("INVALID_ARGUMENT", too_long[0].message, "prompt")]
    assert too_long[0].message.startswith("prompt:") and no_tokens[0].message.startswith("max_new_tokens:")
