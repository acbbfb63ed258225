"""A synthetic model: a timing profile instead of weights, run by the real engine's batching and
streaming. Tokens come out on schedule (prefill ms per prompt token, decode ms per step growing
with the batch size) while the process sleeps, so a fleet of 8 edge nodes of different speeds
plus the cloud can run through the real Ray / Serve / gRPC path on 2 cores, without torch.

Selected with ``ModelSpec(source="synthetic:<prefill ms/token>:<decode ms/step>[:<slowdown>]")``,
e.g. ``synthetic:1.14:19.3:0.064``: each extra row in a batch adds ``slowdown`` of a step.
``edgefleet bench calibrate`` measures all three from a real model on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgefleet.config import SyntheticProfile
from edgefleet.platform.models import LoadedModel

WORDS = ("edge", "cloud", "token", "fleet", "model", "answer", "deadline", "route")


class _WordTokenizer:
    """Token ids are words; enough of a tokenizer for the engine's streamer."""

    pad_token_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(" " + WORDS[i % len(WORDS)] for i in ids)


class SyntheticModel:
    """What the engine runs as a :class:`~edgefleet.platform.engine.StepModel`: each forward pass is
    a sleep of the profile's length."""

    def __init__(self, profile: SyntheticProfile, sleep: Callable[[float], None] = time.sleep) -> None:
        self.profile = profile
        self.context_length = profile.context_length
        self._sleep = sleep  # seconds; a test passes a recorder to read the schedule without waiting

    def encode(self, messages: list[dict[str, str]], prefix: str) -> list[int]:
        chars = sum(len(m["content"]) for m in messages) + len(prefix)
        return [1] * (chars // 4 + 8 * len(messages))  # ~4 characters a token, plus the template

    def run_batch(self, prompts: list[list[int]], max_new_tokens: int, on_step: Callable[[list[int]], bool]) -> None:
        p, rows = self.profile, len(prompts)
        step_s = p.decode_ms_per_step * (1 + p.batch_slowdown * (rows - 1)) / 1000
        # prefill computes the padded prompts, and yields the first token
        self._sleep(p.prefill_ms_per_token * max(map(len, prompts)) * rows / 1000 + step_s)
        for step in range(max_new_tokens):
            # Every row done: the batch ends with its last token, as generate() does (no pass after it).
            if not on_step([step + i + 1 for i in range(rows)]):
                return
            self._sleep(step_s)


def load_synthetic(source: str) -> LoadedModel:
    return LoadedModel(
        model=SyntheticModel(SyntheticProfile.parse(source)),
        tokenizer=_WordTokenizer(),
        name="synthetic",
        version=source,
        quantization="none",
        load_seconds=0.0,
        num_parameters=0,
    )
