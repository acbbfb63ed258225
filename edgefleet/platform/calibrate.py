"""Measure a real model's timing profile, for synthetic backends that behave like it.

Runs the real :class:`GenerationEngine` in process on a few prompts at batch 1 and batch 8 and
reads back its own EWMAs: prefill ms per prompt token and decode ms per step.
"""

from __future__ import annotations

import asyncio
from typing import Any

from edgefleet.config import ModelSpec

TOPICS = ("gravity", "a compiler", "photosynthesis", "the stock market", "a volcano", "rain", "jazz", "a CPU")
PROMPTS = [f"In two sentences, explain {t}." for t in TOPICS]


def calibrate(spec: ModelSpec, *, new_tokens: int = 32, rounds: int = 3) -> dict[str, Any]:
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
    return {
        "model": f"{spec.source} {spec.quantization} threads={spec.threads}",
        "prefill_ms_per_token": prefill,
        "decode_ms_per_step": {int(b): ms for b, ms in sorted(steps.items())},
        "batch_slowdown": slowdown,
        "synthetic_source": f"synthetic:{prefill:.2f}:{decode1:.1f}:{slowdown:.3f}",
    }
