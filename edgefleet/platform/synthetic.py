"""A synthetic model: the real engine's batching and streaming, with a timing profile instead of
a network. Tokens come out on schedule (prefill ms per prompt token, decode ms per step growing
with the batch size) while the process sleeps, so a fleet of 8 edge nodes of different speeds
plus the cloud can run through the real Ray / Serve / gRPC path on 2 cores.

Selected with ``ModelSpec(source="synthetic:<prefill ms/token>:<decode ms/step>[:<slowdown>]")``,
e.g. ``synthetic:1.14:19.3:0.064``: each extra row in a batch adds ``slowdown`` of a step.
``edgefleet bench calibrate`` measures all three from a real model on this machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from edgefleet.platform.engine import GenerationEngine, _BatchStreamer, _Slot
from edgefleet.platform.models import LoadedModel

WORDS = ("edge", "cloud", "token", "fleet", "model", "answer", "deadline", "route")


@dataclass(frozen=True)
class SyntheticProfile:
    prefill_ms_per_token: float = 1.14  # SmolLM2 int8, 1 thread, measured here by `bench calibrate`
    decode_ms_per_step: float = 19.3
    batch_slowdown: float = 0.064  # (27.9 ms at 8 rows / 19.3 ms alone - 1) / 7
    context_length: int = 4096

    @classmethod
    def parse(cls, source: str) -> SyntheticProfile:
        """``synthetic`` or ``synthetic:<prefill ms/token>:<decode ms/step>[:<batch slowdown>]``."""
        parts = source.split(":")[1:]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"synthetic source {source!r}: expected synthetic:<prefill_ms>:<decode_ms>") from None
        if len(values) not in (0, 2, 3) or any(v < 0 for v in values):
            raise ValueError(f"synthetic source {source!r}: expected two or three non-negative numbers")
        return cls(*values) if values else cls()


class _WordTokenizer:
    """Token ids are words; enough of a tokenizer for the engine's streamer."""

    pad_token_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(" " + WORDS[i % len(WORDS)] for i in ids)


class _NoHook:
    def remove(self) -> None:
        pass


class _Step(list):
    def tolist(self) -> list[int]:  # the streamer reads a (B,) tensor's values this way
        return list(self)


def load_synthetic(source: str) -> LoadedModel:
    profile = SyntheticProfile.parse(source)
    return LoadedModel(
        model=profile,
        tokenizer=_WordTokenizer(),
        name="synthetic",
        version=source,
        quantization="none",
        load_seconds=0.0,
        num_parameters=0,
    )


class SyntheticEngine(GenerationEngine):
    """GenerationEngine whose forward passes are sleeps of the profile's length."""

    @property
    def context_length(self) -> int:
        return self.loaded.model.context_length

    @staticmethod
    def _encode(loaded: LoadedModel, messages: list[dict[str, str]], prefix: str = "") -> list[int]:
        chars = sum(len(m["content"]) for m in messages) + len(prefix)
        return [1] * (chars // 4 + 8 * len(messages))  # ~4 characters a token, plus the template

    def _count_forward_passes(self, loaded: LoadedModel) -> Any:
        return _NoHook()  # no torch module to hook: _generate counts its own steps

    def _generate(self, slots: list[_Slot], loaded: LoadedModel) -> None:
        profile: SyntheticProfile = loaded.model
        started = time.perf_counter()
        prompts = [len(self._prompt(loaded, s.req)) for s in slots]
        for s, n in zip(slots, prompts, strict=True):
            s.emit(
                {
                    "type": "start",
                    "queue_ms": (started - s.req.arrived) * 1000,
                    "prompt_tokens": n,
                    "batch_size": len(slots),
                    "model": loaded.name,
                    "model_version": loaded.version,
                }
            )
        with self._lock:
            self.batches += 1
        streamer = _BatchStreamer(self, slots, loaded.tokenizer, set(), max(prompts))
        streamer.put(None)  # the prompt, as generate() would hand it over
        step_s = profile.decode_ms_per_step * (1 + profile.batch_slowdown * (len(slots) - 1)) / 1000
        time.sleep(profile.prefill_ms_per_token * max(prompts) * len(slots) / 1000 + step_s)
        step = 0
        while not all(s.done or s.req.cancelled for s in slots):
            with self._lock:
                self.forward_passes += 1
            streamer.put(_Step(step + i + 1 for i in range(len(slots))))
            step += 1
            time.sleep(step_s)
        streamer.end()
