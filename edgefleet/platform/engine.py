"""A batching, streaming generation engine around one loaded model. No Ray in here.

Requests that arrive within ``batch_quiet_ms`` of each other (up to ``batch_window_ms`` in all)
and share sampling settings run in one ``model.generate`` call: one forward pass per step for the
whole batch. Each step's tokens are routed back to their own request as text deltas through
asyncio queues, so every request streams, and finishes, on its own (EOS, stop sequence or limit).

The EdgeNode actor and the Cloud deployment are thin Ray wrappers around this class.

:meth:`GenerationEngine.stream` yields the typed events of :mod:`edgefleet.platform.events`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edgefleet.config import MAX_NEW_TOKENS_LIMIT
from edgefleet.platform.events import Completed, Delta, EngineEvent, Failed, Finished, FirstToken, Started
from edgefleet.platform.models import LoadedModel
from edgefleet.platform.stats import EngineStats

if TYPE_CHECKING:
    from edgefleet.platform.chat import ChatExample

DEFAULT_MAX_NEW_TOKENS = 128
CHAT_PROBE_BLOCK = 128  # tokens: a chat template's own prompt (SmolLM2's system turn) plus a short answer
EWMA_ALPHA = 0.2  # weight of the newest sample: reacts within ~5 batches, smooths single outliers


@runtime_checkable
class StepModel(Protocol):
    """A model that runs its own batches, with no torch: the seam for backends that are not
    transformers models (the synthetic one). The engine still does the batching and streaming."""

    context_length: int  # tokens

    def encode(self, messages: list[dict[str, str]], prefix: str) -> list[int]:
        """The prompt's token ids; ``prefix``: the assistant's turn so far, to be continued."""
        ...

    def run_batch(self, prompts: list[list[int]], max_new_tokens: int, on_step: Callable[[list[int]], bool]) -> None:
        """Hand each step's new token per row, (B,), to ``on_step``; stop when it returns False."""
        ...


@dataclass
class GenRequest:
    """One generation, already validated for shape; the engine checks it against the model."""

    request_id: str
    messages: list[dict[str, str]]
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # False: no per-token deltas, just one "first_token" marker (for TTFT) and the end event with
    # the whole text. Unary callers save a cross-process message per token.
    stream: bool = True
    # Text already sent to the client by a target that failed mid-stream: this request continues
    # it (as the start of the assistant's turn) instead of starting over.
    prefix: str = ""
    # max_new_tokens is a cap, not a demand: generate at most what the model's context leaves after
    # the prompt (the OpenAI API's default, which the Gateway cannot size without the tokenizer).
    fit_context: bool = False
    # Set by validate(): the prompt's token ids and the model they were made for, so a batch
    # built on that same model does not tokenize the prompt a second time.
    prompt_ids: list[int] | None = field(default=None, repr=False)
    encoded_for: Any = field(default=None, repr=False)
    arrived: float = field(default_factory=time.perf_counter)  # perf_counter s, in this process
    cancelled: bool = False  # set when the caller goes away: its batch row stops at the next step

    def batch_key(self) -> tuple:
        # Only requests with the same sampling settings can share a generate() call.
        if self.temperature == 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.seed)


class _Slot:
    """One request's place in a running batch: its tokens, text and outbound queue."""

    def __init__(self, req: GenRequest, queue: asyncio.Queue, loop: asyncio.AbstractEventLoop) -> None:
        self.req, self.queue, self.loop = req, queue, loop
        self.token_ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of self.text already emitted
        self.partial = 0  # tokens held back because they decode to an incomplete character
        self.done = False
        self.finish_reason = ""

    def emit(self, event: EngineEvent) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class _BatchStreamer:
    """transformers streamer: gets the (B,) token tensor of every step and routes it per request."""

    def __init__(
        self, engine: GenerationEngine, slots: list[_Slot], tokenizer: Any, eos_ids: set[int], prompt_width: int
    ) -> None:
        self.engine, self.slots, self.tok, self.eos_ids = engine, slots, tokenizer, eos_ids
        self.prompt_tokens = len(slots) * prompt_width  # padded: what prefill really computes
        self.prompt_seen = False
        self.started = time.perf_counter()
        self.last_step = self.started

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first hands us the prompt ids: (B, T_prompt)
            self.prompt_seen = True
            return
        self.step(value.tolist())  # value: (B,)

    def step(self, tokens: list[int]) -> bool:
        """One step's new token per row; whether any row still wants more."""
        now = time.perf_counter()
        first = self.last_step == self.started
        self.engine._observe_step(now - self.last_step, first=first, batch=len(self.slots), tokens=self.prompt_tokens)
        self.last_step = now
        for slot, token in zip(self.slots, tokens, strict=True):
            if not slot.done:
                self._advance(slot, int(token))
        return not all(s.done or s.req.cancelled for s in self.slots)

    def end(self) -> None:
        for slot in self.slots:
            if not slot.done:  # generate() stopped on length without our criteria noticing
                self._finish(slot, "length")

    def _advance(self, slot: _Slot, token: int) -> None:
        if token in self.eos_ids:
            self._finish(slot, "stop")
            return
        slot.token_ids.append(token)
        limit_hit = len(slot.token_ids) >= slot.req.max_new_tokens
        text = self.tok.decode(slot.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and slot.partial < 3 and not limit_hit:
            slot.partial += 1  # maybe half a UTF-8 character (≤ 4 bytes): wait for the next token
            return
        slot.partial = 0
        ws = slot.req.prefix[len(slot.req.prefix.rstrip()) :]  # already sent to the client
        if ws and text.startswith(ws):
            text = text[len(ws) :]
        elif ws and slot.sent == 0 and ws.startswith(text) and not limit_hit:
            return  # so far only (part of) the whitespace the client already has
        slot.text = text
        hits = [at for stop in slot.req.stop if (at := text.find(stop, max(0, slot.sent - len(stop)))) >= 0]
        if hits:  # the earliest match wins, whichever stop sequence it is
            slot.text = text[: min(hits)]
            self._finish(slot, "stop")
            return
        if limit_hit:
            self._finish(slot, "length")
            return
        # Hold back what could still turn into a stop sequence.
        holdback = max((len(s) - 1 for s in slot.req.stop), default=0)
        self._flush(slot, len(slot.text) - holdback)

    def _flush(self, slot: _Slot, upto: int) -> None:
        if upto > slot.sent:
            if slot.req.stream:
                slot.emit(Delta(slot.text[slot.sent : upto], len(slot.token_ids)))
            elif slot.sent == 0:
                slot.emit(FirstToken())
            slot.sent = upto

    def _finish(self, slot: _Slot, reason: str) -> None:
        self._flush(slot, len(slot.text))
        slot.done, slot.finish_reason = True, reason
        slot.emit(Finished(reason, len(slot.token_ids), slot.text))


class _RowsDone:
    """StoppingCriteria with a per-row answer, so finished rows stop while others go on."""

    def __init__(self, slots: list[_Slot]) -> None:
        self.slots = slots

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.tensor([s.done or s.req.cancelled for s in self.slots], dtype=torch.bool, device=input_ids.device)


class GenerationEngine:
    """Dynamic batching and token streaming for one model; the model can be swapped live."""

    def __init__(
        self,
        loaded: LoadedModel | None = None,
        *,
        load: Callable[[], LoadedModel] | None = None,
        batch_window_ms: float = 10.0,
        batch_quiet_ms: float = 1.0,
        max_batch: int = 8,
        max_new_tokens_limit: int = MAX_NEW_TOKENS_LIMIT,
    ) -> None:
        """Pass ``load`` rather than ``loaded`` so the model is built on the engine's torch thread.

        All torch work of a process must run on one thread: a second thread entering torch's
        OpenMP pool competes with the first one's spinning team, and decode ran at about half
        speed here (27 vs 45 tok/s for SmolLM2 int8, batch 1).
        """
        # One generate() at a time, always on this one thread (see above); on 2 cores a second
        # concurrent batch would only slow both down anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
        if load is not None:
            loaded = self._executor.submit(load).result()
        if loaded is None:
            raise ValueError("GenerationEngine needs a model: pass load= or loaded=")
        self.loaded = loaded
        self.batch_window_s = batch_window_ms / 1000
        self.batch_quiet_s = batch_quiet_ms / 1000
        self.max_batch = max_batch
        self.max_new_tokens_limit = max_new_tokens_limit
        self._pending: list[tuple[GenRequest, asyncio.Queue]] = []
        self._wake: asyncio.Event | None = None
        self._scheduler: asyncio.Task | None = None
        self._lock = threading.Lock()  # guards the stats below, written from the generate thread
        self.in_flight = 0
        self.forward_passes = 0
        self.batches = 0
        self.requests_done = 0
        self.prefill_ms_per_token: float | None = None  # EWMA, ms per (padded) prompt token
        self.decode_ms_per_step: dict[int, float] = {}  # EWMA by batch size, ms per decode step
        self.draining = False
        self._hook = self._count_forward_passes(loaded)

    # ------------------------------------------------------------------ public

    @property
    def context_length(self) -> int:
        if isinstance(self.loaded.model, StepModel):
            return self.loaded.model.context_length
        return int(getattr(self.loaded.model.config, "max_position_embeddings", 2048))

    def validate(self, req: GenRequest) -> tuple[str, int] | str:
        """Return an error message naming the bad field, or ``("", prompt_tokens)`` when valid.

        A ``fit_context`` request leaves with its ``max_new_tokens`` lowered to the context left.
        """
        if not req.messages or not any(m.get("content", "").strip() for m in req.messages):
            return "prompt: must not be empty"
        if not 0 < req.max_new_tokens <= self.max_new_tokens_limit:
            return f"max_new_tokens: must be in 1..{self.max_new_tokens_limit}, got {req.max_new_tokens}"
        if math.isnan(req.temperature) or req.temperature < 0:
            return f"temperature: must be a number >= 0, got {req.temperature}"
        if math.isnan(req.top_p) or not 0 < req.top_p <= 1:
            return f"top_p: must be in (0, 1], got {req.top_p}"
        try:
            n = len(self._prompt(self.loaded, req))
        except Exception as exc:  # e.g. a chat template that refuses this order of roles
            return f"messages: the model's chat template rejected them ({exc})"
        if req.fit_context:
            if n >= self.context_length:
                return f"prompt: {n} prompt tokens leave no room in the model's context of {self.context_length} tokens"
            req.max_new_tokens = min(req.max_new_tokens, self.context_length - n)  # resolved here, once
        if n + req.max_new_tokens > self.context_length:
            return (
                f"prompt: {n} prompt tokens + max_new_tokens {req.max_new_tokens} exceed "
                f"the model's context of {self.context_length} tokens"
            )
        return ("", n)

    async def stream(self, req: GenRequest) -> AsyncIterator[EngineEvent]:
        """The events of one request (see :mod:`edgefleet.platform.events`)."""
        checked = self.validate(req)
        if isinstance(checked, str):
            # Every validation message starts with the field it is about ("prompt: ..."): that is the param.
            yield Failed("INVALID_ARGUMENT", checked, checked.split(":", 1)[0])
            return
        if self.draining:
            yield Failed("UNAVAILABLE", "node is draining")
            return
        queue: asyncio.Queue = asyncio.Queue()
        self._ensure_scheduler()
        self._pending.append((req, queue))
        self.in_flight += 1
        self._wake.set()
        finished = False
        try:
            while True:
                event = await queue.get()
                finished = isinstance(event, Finished | Failed)
                yield event
                if finished:
                    return
        finally:
            self.in_flight -= 1
            if not finished:  # the caller left (deadline, disconnect): free its batch row
                req.cancelled = True
                self._pending = [p for p in self._pending if p[0] is not req]

    async def complete(self, req: GenRequest) -> Completed | Failed:
        """The whole request as one result, timed from the engine receiving it."""
        req.stream = False
        received = time.perf_counter()
        started = None
        first_ms = None
        async for event in self.stream(req):
            if isinstance(event, Failed):
                return event
            if isinstance(event, Started):
                started = event
            elif isinstance(event, FirstToken):
                first_ms = (time.perf_counter() - received) * 1000
            elif isinstance(event, Finished) and started is not None:
                total_ms = (time.perf_counter() - received) * 1000
                return Completed(started, event, total_ms if first_ms is None else first_ms, total_ms)
        return Failed("INTERNAL", "the engine closed the stream without an end event")

    async def swap_with(self, load: Callable[[], LoadedModel]) -> str:
        """Build a model on the torch thread (after the running batch), then serve it from the next batch."""
        loaded = await asyncio.get_running_loop().run_in_executor(self._executor, load)
        return self.swap(loaded)

    async def probe_loss(self, probe: Sequence[str] | Sequence[ChatExample], block: int = 64) -> float:
        """The served model's mean loss on a fixed quality probe, on the torch thread: on chat
        exchanges, the loss of the reference answers given their questions (what a user would get);
        on plain texts, every token's."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, _probe_loss, self.loaded, probe, block)

    def swap(self, loaded: LoadedModel) -> str:
        """Serve ``loaded`` from the next batch on; batches already running finish on the old one."""
        self._hook.remove()
        self._hook = self._count_forward_passes(loaded)
        self.loaded = loaded
        return loaded.version

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                queue_depth=len(self._pending),
                in_flight=self.in_flight,
                forward_passes=self.forward_passes,
                batches=self.batches,
                requests_done=self.requests_done,
                prefill_ms_per_token=self.prefill_ms_per_token,
                decode_ms_per_step=dict(self.decode_ms_per_step),
                model=self.loaded.name,
                model_version=self.loaded.version,
                quantization=self.loaded.quantization,
                context_length=self.context_length,
                draining=self.draining,
            )

    # ------------------------------------------------------------------ batching

    def _ensure_scheduler(self) -> None:
        if self._scheduler is None or self._scheduler.done():
            self._wake = asyncio.Event()
            self._scheduler = asyncio.get_running_loop().create_task(self._schedule())

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            await self._collect_burst()
            while self._pending:
                key = self._pending[0][0].batch_key()
                batch = [p for p in self._pending if p[0].batch_key() == key][: self.max_batch]
                for item in batch:
                    self._pending.remove(item)
                slots = [_Slot(req, queue, loop) for req, queue in batch]
                await loop.run_in_executor(self._executor, self._run_batch, slots, self.loaded)  # never raises

    async def _collect_burst(self) -> None:
        """Let near-simultaneous requests join: wait while they keep arriving, up to the window.

        A lone request waits ``batch_quiet_ms``, not the whole window; a burst (8 requests sent
        together, which reach the actor spread over a few ms through proxy and Gateway) keeps the
        window open and shares the batch.
        """
        deadline = time.perf_counter() + self.batch_window_s
        seen = len(self._pending)
        while len(self._pending) < self.max_batch and time.perf_counter() < deadline:
            await asyncio.sleep(self.batch_quiet_s)
            if len(self._pending) == seen:
                return
            seen = len(self._pending)

    def _run_batch(self, slots: list[_Slot], loaded: LoadedModel) -> None:
        try:
            self._generate(slots, loaded)
        except Exception as exc:  # a failed batch must still close every stream it holds
            for s in slots:
                if not s.done:
                    s.done = True
                    s.emit(Failed("INTERNAL", f"generation failed: {exc}"))
        finally:
            with self._lock:
                self.requests_done += len(slots)

    def _generate(self, slots: list[_Slot], loaded: LoadedModel) -> None:
        started = time.perf_counter()
        prompts = [self._prompt(loaded, s.req) for s in slots]
        for s, p in zip(slots, prompts, strict=True):
            s.emit(Started((started - s.req.arrived) * 1000, len(p), len(slots), loaded.name, loaded.version))
        with self._lock:
            self.batches += 1
        max_new_tokens = max(s.req.max_new_tokens for s in slots)
        if isinstance(loaded.model, StepModel):
            streamer = _BatchStreamer(self, slots, loaded.tokenizer, set(), max(map(len, prompts)))
            loaded.model.run_batch(prompts, max_new_tokens, self._counted(streamer.step))
        else:
            streamer = self._run_transformers(slots, loaded, prompts, max_new_tokens)
        streamer.end()

    def _counted(self, step: Callable[[list[int]], bool]) -> Callable[[list[int]], bool]:
        """A step model has no forward hook: count its steps as they come."""

        def counted(tokens: list[int]) -> bool:
            with self._lock:
                self.forward_passes += 1
            return step(tokens)

        return counted

    def _run_transformers(
        self, slots: list[_Slot], loaded: LoadedModel, prompts: list[list[int]], max_new_tokens: int
    ) -> _BatchStreamer:
        import torch

        tok = loaded.tokenizer
        width = max(map(len, prompts))
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # (B, T) left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (B, T)
        eos = loaded.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        streamer = _BatchStreamer(self, slots, tok, eos_ids, width)
        first = slots[0].req
        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        with torch.inference_mode():
            loaded.model.generate(
                input_ids=ids,
                attention_mask=mask,
                streamer=streamer,
                pad_token_id=pad,
                max_new_tokens=max_new_tokens,
                stopping_criteria=[_RowsDone(slots)],
                **sampling,
            )
        return streamer

    def _observe_step(self, seconds: float, *, first: bool, batch: int, tokens: int) -> None:
        ms = seconds * 1000
        with self._lock:
            if first:  # the prompt's forward pass, which also yields the first token: prefill
                self.prefill_ms_per_token = _ewma(self.prefill_ms_per_token, ms / max(1, tokens))
            else:
                self.decode_ms_per_step[batch] = _ewma(self.decode_ms_per_step.get(batch), ms)

    def _prompt(self, loaded: LoadedModel, req: GenRequest) -> list[int]:
        """The request's prompt ids for ``loaded``: cached from validate() unless the model changed."""
        if req.encoded_for is not loaded:
            req.prompt_ids, req.encoded_for = self._encode(loaded, req.messages, req.prefix), loaded
        return req.prompt_ids

    @staticmethod
    def _encode(loaded: LoadedModel, messages: list[dict[str, str]], prefix: str = "") -> list[int]:
        if isinstance(loaded.model, StepModel):
            return loaded.model.encode(messages, prefix)
        tok = loaded.tokenizer
        if prefix:  # resume the assistant's turn mid-way: the prompt ends with the text so far
            # Trailing whitespace stays out of the prompt: tokenizers fold it into the next word
            # (" France"), and a dangling space token derails the model; see _advance.
            chat = [*messages, {"role": "assistant", "content": prefix.rstrip()}]
            out = tok.apply_chat_template(chat, continue_final_message=True, tokenize=True)
        else:
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    def _count_forward_passes(self, loaded: LoadedModel):
        if isinstance(loaded.model, StepModel):
            return _NoHook()  # counted per step instead: see _counted

        def hook(*_args: Any) -> None:
            with self._lock:
                self.forward_passes += 1

        return loaded.model.register_forward_hook(hook)


class _NoHook:
    def remove(self) -> None:
        pass


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - EWMA_ALPHA) * old + EWMA_ALPHA * new


def _probe_loss(loaded: LoadedModel, probe: Sequence[str] | Sequence[ChatExample], block: int) -> float:
    import torch

    from edgefleet.platform.chat import ChatExample, render_chat, sample_losses

    chats = [p for p in probe if isinstance(p, ChatExample)]
    if chats and len(chats) != len(probe):
        raise ValueError("a probe is chat exchanges or plain texts, not both")
    if chats:
        # the answer's tokens only, in a block the chat template's own prompt leaves room in
        samples = render_chat(chats, loaded.tokenizer, max(block, CHAT_PROBE_BLOCK))
        with torch.inference_mode():
            return float(sample_losses(loaded.model, samples).mean())
    ids = [loaded.tokenizer(t, return_tensors="pt").input_ids[0][:block] for t in probe]
    total = count = 0.0
    with torch.inference_mode():
        for row in ids:
            if len(row) < 2:
                continue
            out = loaded.model(input_ids=row[None, :], labels=row[None, :])
            total += float(out.loss) * (len(row) - 1)
            count += len(row) - 1
    if not count:
        raise ValueError("the probe texts hold no tokens to score")
    return total / count
