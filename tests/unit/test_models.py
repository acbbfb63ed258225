"""The tiny model: built from a config, deterministic, quantisable, generates. No download, no Ray."""

from __future__ import annotations

import pytest
import torch

from edgefleet.config import ModelSpec
from edgefleet.errors import ModelError
from edgefleet.platform.models import build_tiny, build_tiny_tokenizer, generate, load_model, quantize_int8


def test_tiny_tokenizer_round_trips_any_text():
    tok = build_tiny_tokenizer()
    text = "héllo, wörld — 東京 ✓"

    ids = tok(text)["input_ids"]

    assert tok.decode(ids) == text
    assert len(ids) == len(text.encode())  # byte-level: one token per UTF-8 byte


def test_tiny_is_deterministic_per_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)

    a, _ = build_tiny(seed=0)
    b, _ = build_tiny(seed=0)
    c, _ = build_tiny(seed=1)

    assert torch.rand(1) == before  # build_tiny forked the RNG instead of reseeding ours
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_tiny_generates_greedily_and_reproducibly():
    loaded = load_model(ModelSpec(source="tiny", quantization="none"))

    first = generate(loaded, "What is the capital of France?", max_new_tokens=8)
    second = generate(loaded, "What is the capital of France?", max_new_tokens=8)

    assert isinstance(first, str) and first == second
    assert loaded.name == "tiny" and loaded.num_parameters > 50_000


def test_chat_messages_and_sampling_with_a_seed():
    loaded = load_model(ModelSpec(source="tiny", quantization="none"))
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]

    a = generate(loaded, messages, max_new_tokens=6, temperature=1.0, seed=7)
    b = generate(loaded, messages, max_new_tokens=6, temperature=1.0, seed=7)

    assert a == b


def test_int8_quantisation_replaces_linears_and_stays_close_to_fp32():
    fp32, tok = build_tiny(seed=0)
    fp32.eval()
    int8 = quantize_int8(build_tiny(seed=0)[0].eval())
    ids = tok("the quick brown fox", return_tensors="pt")["input_ids"]

    with torch.inference_mode():
        ref, got = fp32(ids).logits, int8(ids).logits  # (1, T, vocab)

    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    quantised = [m for m in int8.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert quantised
    # one scale per output channel: per tensor lost facts the fp32 model knows (see quantize_int8)
    assert all(m.weight().qscheme() == torch.per_channel_affine for m in quantised)
    relative_error = ((ref - got).abs().mean() / ref.abs().mean()).item()
    agreement = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert relative_error < 0.2, relative_error  # ~10% on this tiny random model; a broken copy is ~100%
    assert agreement >= 0.75, agreement


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="neither 'tiny', 'smollm2' nor a Hugging Face model directory"):
        load_model(ModelSpec(source=str(tmp_path / "missing")), cache_dir=tmp_path)


def test_local_hf_directory_source(tmp_path):
    model, tok = build_tiny(seed=3)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")

    loaded = load_model(ModelSpec(source=str(tmp_path / "m"), quantization="none"))

    assert loaded.version.startswith("dir:")
    assert torch.equal(loaded.model.lm_head.weight, model.lm_head.weight)


def test_lora_adapter_is_merged_before_quantisation(tmp_path):
    from peft import LoraConfig, get_peft_model

    base, tok = build_tiny(seed=0)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = tok("adapter", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = peft_model(ids).logits

    loaded = load_model(ModelSpec(source="tiny", quantization="none", adapter=tmp_path / "adapter"))
    plain = load_model(ModelSpec(source="tiny", quantization="none"))
    with torch.inference_mode():
        merged, untouched = loaded.model(ids).logits, plain.model(ids).logits

    assert loaded.version == "tiny-seed0+adapter:adapter"
    assert torch.allclose(merged, expected, atol=1e-4)
    assert not torch.allclose(merged, untouched, atol=1e-3)  # the adapter really changed the model
