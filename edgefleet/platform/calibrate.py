"""Measure a real model's timing profile, for synthetic backends that behave like it.

Runs the real :class:`GenerationEngine` in process on a few prompts at batch 1 and batch 8 and
reads back its own EWMAs: prefill ms per prompt token and decode ms per step.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from edgefleet.config import ModelSpec

TOPICS = ("gravity", "a compiler", "photosynthesis", "the stock market", "a volcano", "rain", "jazz", "a CPU")
PROMPTS = [f"In two sentences, explain {t}." for t in TOPICS]


@dataclass(frozen=True)
class TimingProfile:
    """A model's measured timing here, and the ``synthetic:`` source that mimics it."""

    model: str  # "<source> <quantization> threads=<n>"
    prefill_ms_per_token: float
    decode_ms_per_step: dict[int, float]  # batch size → ms per decode step
    batch_slowdown: float  # extra decode time per extra sequence in the batch, as a fraction

    @property
    def synthetic_source(self) -> str:
        decode1 = self.decode_ms_per_step.get(1) or min(self.decode_ms_per_step.values())
        return f"synthetic:{self.prefill_ms_per_token:.2f}:{decode1:.1f}:{self.batch_slowdown:.3f}"


def calibrate(spec: ModelSpec, *, new_tokens: int = 32, rounds: int = 3) -> TimingProfile:
    """Profile of ``spec`` on this machine, with the ``synthetic:`` source string that mimics it."""
    from edgefleet.platform.engine import GenerationEngine, GenRequest
    from edgefleet.platform.models import load_model

    engine = GenerationEngine(load=lambda: load_model(spec))

    async def run() -> None:
        for r in range(rounds):
            for p in PROMPTS[:2]:  # batch 1
                await engine.complete(
                    GenRequest(f"a{r}{p}", [{"role": "user", "content": p}], max_new_tokens=new_tokens)
                )
            await asyncio.gather(
                *(
                    engine.complete(GenRequest(f"b{r}{i}", [{"role": "user", "content": p}], max_new_tokens=new_tokens))
                    for i, p in enumerate(PROMPTS)
                )
            )

    asyncio.run(run())
    stats = engine.stats()
    steps = stats.decode_ms_per_step
    prefill, decode1 = stats.prefill_ms_per_token, steps.get(1) or min(steps.values())
    biggest = max(steps)
    slowdown = max(0.0, (steps[biggest] / decode1 - 1) / (biggest - 1)) if biggest > 1 else 0.0
    return TimingProfile(
        model=f"{spec.source} {spec.quantization} threads={spec.threads}",
        prefill_ms_per_token=prefill,
        decode_ms_per_step={int(b): ms for b, ms in sorted(steps.items())},
        batch_slowdown=slowdown,
    )
