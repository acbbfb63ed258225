"""The synthetic backend: the real engine's batching and streaming on a timing profile, no torch."""

from __future__ import annotations

import asyncio

import pytest

from edgefleet.config import ModelSpec, SyntheticProfile, parse_config
from edgefleet.errors import ConfigError
from edgefleet.platform.engine import GenerationEngine, GenRequest
from edgefleet.platform.events import Delta, EngineEvent, Finished, Started
from edgefleet.platform.models import LoadedModel
from edgefleet.platform.synthetic import SyntheticModel, load_synthetic


def engine(source: str = "synthetic:0.1:2") -> GenerationEngine:
    return GenerationEngine(load=lambda: load_synthetic(source))


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_profile_parsing_and_config_validation():
    assert SyntheticProfile.parse("synthetic:1.5:20") == SyntheticProfile(1.5, 20.0)
    assert SyntheticProfile.parse("synthetic:1:20:0.1").batch_slowdown == 0.1
    assert SyntheticProfile.parse("synthetic") == SyntheticProfile()
    assert ModelSpec(source="synthetic:2:30").source == "synthetic:2:30"
    with pytest.raises(ConfigError, match="synthetic:<prefill_ms>:<decode_ms>"):
        parse_config({"fleet": {"edge_nodes": [{"id": "e", "model": {"source": "synthetic:fast:1"}}]}})


def test_streams_exactly_the_asked_tokens_with_the_same_events_as_a_real_model():
    eng = engine()

    events = asyncio.run(_events(eng, GenRequest("a", chat("hello there"), max_new_tokens=7)))

    assert isinstance(events[0], Started) and events[0].model == "synthetic"
    assert isinstance(events[-1], Finished) and events[-1].completion_tokens == 7
    assert events[-1].finish_reason == "length"
    assert "".join(e.text for e in events if isinstance(e, Delta)) == events[-1].text


def test_concurrent_requests_share_steps_and_measure_slower_steps_in_bigger_batches():
    eng = engine("synthetic:0.1:3")

    async def burst():
        return await asyncio.gather(
            *(eng.complete(GenRequest(f"r{i}", chat("x"), max_new_tokens=10)) for i in range(8))
        )

    done = asyncio.run(burst())
    single = asyncio.run(eng.complete(GenRequest("s", chat("x"), max_new_tokens=10)))
    stats = eng.stats()

    assert all(d.finished.completion_tokens == 10 for d in done) and single.finished.completion_tokens == 10
    assert stats.forward_passes < 8 * 10  # shared steps: batching happened
    steps = stats.decode_ms_per_step
    assert 1 in steps and max(steps) > 1 and steps[max(steps)] > 3.0 and steps[1] >= 3.0  # sleeps are lower bounds


def test_a_batch_costs_prefill_and_one_step_per_token_of_its_longest_row_and_nothing_after_it():
    """The schedule the router's batch model and the real path share: N forward passes for N new
    tokens (the prefill's yields the first), and the batch ends with its last token."""
    slept: list[float] = []  # seconds, in order
    profile = SyntheticProfile(prefill_ms_per_token=0.5, decode_ms_per_step=10.0, batch_slowdown=0.1)
    model = SyntheticModel(profile, sleep=slept.append)
    eng = GenerationEngine(LoadedModel(model, _tokenizer(), "synthetic", "test", "none", 0.0, 0))
    short, long = GenRequest("short", chat("x"), max_new_tokens=3), GenRequest("long", chat("y" * 80), max_new_tokens=5)
    width = len(model.encode(long.messages, ""))  # the longer prompt: the batch is padded to it

    async def together():
        return await asyncio.gather(eng.complete(short), eng.complete(long))

    done = asyncio.run(together())

    stats, step_ms = eng.stats(), 10.0 * (1 + 0.1)  # two rows
    assert stats.batches == 1 and [d.started.batch_size for d in done] == [2, 2]
    assert [d.finished.completion_tokens for d in done] == [3, 5]
    assert stats.forward_passes == 5  # one per token of the longest row, as the real path counts
    assert len(slept) == 5  # the prefill (it yields token 1), then steps 2..5: none after the last token
    assert sum(slept) * 1000 == pytest.approx(0.5 * width * 2 + 5 * step_ms)


def _tokenizer():
    return load_synthetic("synthetic").tokenizer


async def _events(eng: GenerationEngine, req: GenRequest) -> list[EngineEvent]:
    return [e async for e in eng.stream(req)]


def test_calibration_gives_a_profile_a_synthetic_backend_accepts():
    from edgefleet.platform.calibrate import calibrate

    profile = calibrate(ModelSpec(source="tiny", quantization="none"), new_tokens=6, rounds=1)

    parsed = SyntheticProfile.parse(profile.synthetic_source)
    assert profile.prefill_ms_per_token > 0 and 1 in profile.decode_ms_per_step
    assert max(profile.decode_ms_per_step) > 1  # the batch of 8 was measured too
    assert parsed.decode_ms_per_step == pytest.approx(profile.decode_ms_per_step[1], abs=0.05)
