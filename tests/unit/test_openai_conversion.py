"""The OpenAI HTTP API's pure parts, without Ray: what real clients send becomes engine requests or a
400 naming the field; several prompts become several choices; and a request without max_tokens
generates as far as the model's context allows (the engine sizes it: only it knows the prompt's length)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from edgefleet.config import MAX_NEW_TOKENS_LIMIT, EdgefleetConfig, ModelSpec, parse_config
from edgefleet.errors import ConfigError
from edgefleet.platform.events import Completed, Failed
from edgefleet.serve.events import GenerateResult
from edgefleet.serve.openai_http import (
    MAX_PROMPTS,
    ChatBody,
    CompletionBody,
    body_error,
    chat_messages,
    full_response,
    prompts,
)
from edgefleet.serve.validation import DEFAULT_MAX_NEW_TOKENS, RequestError, validate


def _chat(*messages: dict) -> list[dict[str, str]]:
    return chat_messages(ChatBody.model_validate({"messages": list(messages)}).messages)


def _refusal(model: type, body: dict) -> RequestError:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return body_error(caught.value.errors())


# ---------------------------------------------------------------- chat messages


def test_text_parts_are_joined_and_developer_is_system():
    got = _chat(
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]},
        {"role": "assistant", "content": None},  # a turn that only called tools
    )
    assert got == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first\nsecond"},
        {"role": "assistant", "content": ""},
    ]


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (
            [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}],
            "messages[0].content[1].type",
        ),
        ([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}], "messages[0].content[0].type"),
        (["just a string"], "messages[0].content[0].type"),
        ([{"type": "text", "text": 5}], "messages[0].content[0].text"),
        (None, "messages[0].content"),  # null only for an assistant
        (7, "messages[0].content"),
    ],
)
def test_content_that_is_not_text_is_refused_naming_the_part(content, param):
    with pytest.raises(RequestError) as bad:
        _chat({"role": "user", "content": content})
    assert bad.value.http_status == 400 and bad.value.param == param
    assert bad.value.message.startswith(f"{param}: ")


# ---------------------------------------------------------------- prompts


def test_prompt_string_or_list():
    assert prompts("hello") == ["hello"]
    assert prompts(["a", "b"]) == ["a", "b"]
    assert len(prompts(["p"] * MAX_PROMPTS)) == MAX_PROMPTS


@pytest.mark.parametrize(
    ("prompt", "param", "says"),
    [
        ([1, 2, 3], "prompt", "token ids"),
        ([[1, 2], [3]], "prompt", "token ids"),
        (["p"] * (MAX_PROMPTS + 1), "prompt", f"at most {MAX_PROMPTS}"),
        ([], "prompt", "list of 1 to"),
        (["a", "  "], "prompt[1]", "non-blank"),
        (["a", None], "prompt[1]", "string"),
        ("   ", "prompt", "non-blank"),
        ({"text": "a"}, "prompt", "string"),
    ],
)
def test_bad_prompts_are_refused_naming_the_field(prompt, param, says):
    with pytest.raises(RequestError) as bad:
        prompts(prompt)
    assert bad.value.param == param and bad.value.message.startswith(f"{param}: ") and says in bad.value.message


# ---------------------------------------------------------------- fields that change the meaning


@pytest.mark.parametrize(
    ("model", "extra", "param"),
    [
        (ChatBody, {"n": 2}, "n"),
        (ChatBody, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        (ChatBody, {"functions": [{"name": "f"}]}, "functions"),
        (ChatBody, {"tool_choice": "required"}, "tool_choice"),
        (ChatBody, {"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        (ChatBody, {"response_format": {"type": "json_object"}}, "response_format"),
        (ChatBody, {"logprobs": True}, "logprobs"),
        (ChatBody, {"top_logprobs": 3}, "top_logprobs"),
        (CompletionBody, {"n": 3}, "n"),
        (CompletionBody, {"echo": True}, "echo"),
        (CompletionBody, {"best_of": 2}, "best_of"),
        (CompletionBody, {"suffix": "tail"}, "suffix"),
        (CompletionBody, {"logprobs": 1}, "logprobs"),
    ],
)
def test_unsupported_fields_are_refused_by_name(model, extra, param):
    base = {"messages": [{"role": "user", "content": "hi"}]} if model is ChatBody else {"prompt": "hi"}
    err = _refusal(model, base | extra)
    assert err.http_status == 400 and err.param == param and err.message.startswith(f"{param}: ")
    assert "must be" in err.message  # says what would be accepted


def test_harmless_fields_are_accepted():
    ChatBody.model_validate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "n": 1,
            "user": "u-1",
            "presence_penalty": 0,
            "frequency_penalty": 0,
            "stream_options": {"include_usage": True},
            "tools": [],
            "tool_choice": "none",
            "response_format": {"type": "text"},
            "logprobs": False,
            "top_logprobs": 0,
            "parallel_tool_calls": False,
        }
    )
    # What LangChain's OpenAI LLM sends (langchain_openai/llms/base.py, BaseOpenAI._default_params).
    CompletionBody.model_validate(
        {
            "model": "gpt-3.5-turbo-instruct",
            "prompt": ["hi"],
            "temperature": 0.7,
            "top_p": 1,
            "frequency_penalty": 0,
            "presence_penalty": 0,
            "n": 1,
            "seed": None,
            "logprobs": None,
            "max_tokens": 256,
            "best_of": 1,
            "echo": False,
        }
    )


# ---------------------------------------------------------------- responses


def _end(text: str, prompt_tokens: int, completion_tokens: int, node: str) -> GenerateResult:
    return GenerateResult(
        request_id="r",
        text=text,
        finish_reason="length",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model="tiny",
        tier="edge",
        node_id=node,
        model_version="v1",
        queue_ms=0.0,
        ttft_ms=1.0,
        total_ms=2.0,
        sla_met=True,
        route_reason="r",
        predicted_ms=1.0,
        network_simulated=True,
        attempts=1,
    )


def test_one_choice_per_prompt_in_order_with_summed_usage():
    body = full_response("text", "rid-1", [_end("a", 3, 4, "edge-1"), _end("b", 5, 6, "edge-2")])

    assert body["id"] == "rid-1" and body["object"] == "text_completion"
    assert [(c["index"], c["text"]) for c in body["choices"]] == [(0, "a"), (1, "b")]
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 10, "total_tokens": 18}
    assert [c["edgefleet"]["served_by"]["node_id"] for c in body["choices"]] == ["edge-1", "edge-2"]
    assert "edgefleet" not in body  # each choice says where it ran


def test_one_choice_keeps_the_extension_at_the_top():
    body = full_response("chat", "rid-2", [_end("a", 3, 4, "edge-1")])
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "length"}
    ]
    assert body["edgefleet"]["served_by"]["node_id"] == "edge-1"


# ---------------------------------------------------------------- max_tokens


def _validated(max_new_tokens: int | None, cap: int | None):
    return validate(
        prompt="hi",
        messages=None,
        max_new_tokens=max_new_tokens,
        temperature=None,
        top_p=None,
        seed=None,
        stop=None,
        deadline_ms=None,
        route="auto",
        site="",
        priority="normal",
        request_id=None,
        cfg=EdgefleetConfig(),
        fit_context_cap=cap,
    )


def test_without_max_tokens_http_asks_for_the_context_up_to_the_cap_and_grpc_keeps_its_default():
    http = _validated(None, cap=300)
    assert (http.max_new_tokens, http.fit_context) == (300, True)
    assert http.engine_request().fit_context is True
    explicit = _validated(7, cap=300)
    assert (explicit.max_new_tokens, explicit.fit_context) == (7, False)
    grpc_default = _validated(0, cap=None)
    assert (grpc_default.max_new_tokens, grpc_default.fit_context) == (DEFAULT_MAX_NEW_TOKENS, False)


def test_an_open_ended_answer_is_routed_on_the_default_length_not_the_cap():
    # Planning a deadline on 1024 tokens would send every OpenAI request without max_tokens to the
    # fastest target; answers mostly end at EOS long before the cap.
    assert _validated(None, cap=1024).planned_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert _validated(None, cap=64).planned_new_tokens == 64
    assert _validated(900, cap=1024).planned_new_tokens == 900  # asked for: planned as asked


def test_the_cap_is_configured_and_never_above_what_a_request_may_ask():
    assert EdgefleetConfig().ingress.default_max_tokens_cap == MAX_NEW_TOKENS_LIMIT
    assert parse_config({"ingress": {"default_max_tokens_cap": 256}}).ingress.default_max_tokens_cap == 256
    with pytest.raises(ConfigError, match="default_max_tokens_cap"):
        parse_config({"ingress": {"default_max_tokens_cap": MAX_NEW_TOKENS_LIMIT + 1}})


@pytest.fixture(scope="module")
def engine():
    from edgefleet.platform.engine import GenerationEngine
    from edgefleet.platform.models import load_model

    return GenerationEngine(load=lambda: load_model(ModelSpec(source="tiny", quantization="none")))


def test_engine_fits_an_open_ended_request_into_the_context_left(engine):
    from edgefleet.platform.engine import GenRequest

    context = engine.context_length  # 512 for the tiny model, below the cap
    long_prompt = [{"role": "user", "content": "x" * (context - 40)}]  # one byte-level token per character

    fitted = GenRequest("f", long_prompt, max_new_tokens=MAX_NEW_TOKENS_LIMIT, fit_context=True)
    checked = engine.validate(fitted)
    assert isinstance(checked, tuple), checked
    n = checked[1]
    assert fitted.max_new_tokens == context - n > 0
    fixed = engine.validate(GenRequest("g", long_prompt, max_new_tokens=MAX_NEW_TOKENS_LIMIT))
    assert isinstance(fixed, str) and fixed.startswith("prompt: ")  # an explicit length is not cut

    done = asyncio.run(
        engine.complete(GenRequest("h", long_prompt, max_new_tokens=MAX_NEW_TOKENS_LIMIT, fit_context=True))
    )
    assert isinstance(done, Completed), done
    prompt_tokens, end = done.started.prompt_tokens, done.finished
    assert 0 < end.completion_tokens <= context - prompt_tokens
    assert end.finish_reason == "stop" or prompt_tokens + end.completion_tokens == context

    full = asyncio.run(
        engine.complete(
            GenRequest("i", [{"role": "user", "content": "x" * context}], max_new_tokens=8, fit_context=True)
        )
    )
    assert isinstance(full, Failed) and full.message.startswith("prompt: ") and "no room" in full.message
