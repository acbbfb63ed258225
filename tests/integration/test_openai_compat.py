"""The OpenAI-compatible HTTP API as real clients use it: the official `openai` client and LangChain,
against the session fleet's Gateway (tiny random-weight models; a few tokens per answer).

Content-part and developer messages, list prompts (what LangChain's completion LLM always sends),
unsupported fields refused by name, /v1/models' typed entries, x-request-id equal to the body's id,
and a request without max_tokens running to the end of the model's context.
"""

from __future__ import annotations

import openai
import pytest

from tests.conftest import TEST_TOKEN

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TINY_CONTEXT = 512  # the tiny model's max_position_embeddings (edgefleet/platform/models.py)


@pytest.fixture(scope="module")
def oa(served):
    return openai.OpenAI(base_url=f"{served.http_url}/v1", api_key=TEST_TOKEN, max_retries=0, timeout=60)


def _chat(oa, messages, **kwargs):
    return oa.chat.completions.create(model="edgefleet", messages=messages, max_tokens=4, temperature=0, **kwargs)


def _refused(call) -> dict:
    with pytest.raises(openai.BadRequestError) as bad:
        call()
    error = bad.value.response.json()["error"]
    assert error["message"].startswith(f"{error['param']}: "), error
    return error


def test_text_parts_answer_as_the_joined_string(oa):
    parts = _chat(oa, [{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    plain = _chat(oa, [{"role": "user", "content": "hi"}])
    two = _chat(oa, [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    joined = _chat(oa, [{"role": "user", "content": "a\nb"}])

    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens
    assert two.choices[0].message.content == joined.choices[0].message.content


def test_developer_role_is_a_system_message(oa):
    developer = _chat(oa, [{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": "hi"}])
    system = _chat(oa, [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hi"}])
    assert developer.choices[0].message.content == system.choices[0].message.content
    assert developer.usage.prompt_tokens == system.usage.prompt_tokens


def test_list_prompt_gives_one_choice_per_prompt_in_order(oa):
    both = oa.completions.create(model="edgefleet", prompt=["one", "two two"], max_tokens=3, temperature=0)
    one = oa.completions.create(model="edgefleet", prompt="one", max_tokens=3, temperature=0)
    two = oa.completions.create(model="edgefleet", prompt="two two", max_tokens=3, temperature=0)

    assert [c.index for c in both.choices] == [0, 1]
    assert [c.text for c in both.choices] == [one.choices[0].text, two.choices[0].text]
    assert both.usage.prompt_tokens == one.usage.prompt_tokens + two.usage.prompt_tokens
    assert both.usage.completion_tokens == one.usage.completion_tokens + two.usage.completion_tokens


def test_list_prompts_beyond_the_limit_streamed_or_token_ids_are_refused(oa):
    from edgefleet.serve.openai_http import MAX_PROMPTS

    def create(**kwargs):
        return lambda: oa.completions.create(model="edgefleet", max_tokens=2, **kwargs)

    assert _refused(create(prompt=["p"] * (MAX_PROMPTS + 1)))["param"] == "prompt"
    assert _refused(create(prompt=["a", "b"], stream=True))["param"] == "stream"
    token_ids = _refused(create(prompt=[1, 2, 3]))
    assert token_ids["param"] == "prompt" and "token ids" in token_ids["message"]
    assert _refused(create(prompt=["fine", " "]))["param"] == "prompt[1]"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_fields_that_change_the_meaning_are_refused_by_name(oa, extra, param):
    error = _refused(lambda: _chat(oa, [{"role": "user", "content": "hi"}], **extra))
    assert error["param"] == param and error["code"] == "invalid_argument"


def test_completion_only_fields_are_refused_by_name(oa):
    for extra, param in [({"echo": True}, "echo"), ({"best_of": 2}, "best_of"), ({"suffix": "end"}, "suffix")]:
        error = _refused(lambda e=extra: oa.completions.create(model="edgefleet", prompt="hi", max_tokens=2, **e))
        assert error["param"] == param


def test_an_image_part_is_refused_naming_the_part(oa):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    error = _refused(lambda: _chat(oa, [{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]))
    assert error["param"] == "messages[0].content[1].type" and "image_url" in error["message"]


def test_harmless_fields_are_ignored(oa):
    done = _chat(oa, [{"role": "user", "content": "hi"}], n=1, user="u-1", presence_penalty=0, tool_choice="none")
    assert len(done.choices) == 1


def test_models_are_typed_entries_with_created(oa):
    models = oa.models.list().data
    assert [m.id for m in models] == ["edgefleet"]
    assert models[0].object == "model" and models[0].owned_by == "edgefleet"
    assert isinstance(models[0].created, int) and models[0].created > 1_600_000_000


def test_x_request_id_is_the_completion_id(oa):
    raw = oa.chat.completions.with_raw_response.create(
        model="edgefleet", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert raw.headers["x-request-id"] == raw.parse().id
    text = oa.completions.with_raw_response.create(model="edgefleet", prompt=["a", "b"], max_tokens=2)
    assert text.headers["x-request-id"] == text.parse().id

    with oa.chat.completions.with_streaming_response.create(
        model="edgefleet", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
    ) as streamed:
        assert {chunk.id for chunk in streamed.parse()} == {streamed.headers["x-request-id"]}

    # A caller's own x-request-id is what Serve's proxy answers with: the completion takes it too.
    mine = oa.chat.completions.with_raw_response.create(
        model="edgefleet",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
        extra_headers={"x-request-id": "caller-chosen-7"},
    )
    assert mine.headers["x-request-id"] == mine.parse().id == "caller-chosen-7"
    # ... within limits: it becomes an id in logs and metrics, and later the key of a user's feedback.
    with pytest.raises(openai.BadRequestError, match="x-request-id"):
        oa.chat.completions.create(
            model="edgefleet",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            extra_headers={"x-request-id": "x" * 129},
        )


def test_without_max_tokens_the_answer_may_fill_the_context(oa):
    # A prompt that leaves ~40 tokens: the old fixed default of 128 was refused as too long.
    prompt = "x" * (TINY_CONTEXT - 60)
    done = oa.completions.create(model="edgefleet", prompt=prompt, temperature=0)
    used = done.usage.prompt_tokens + done.usage.completion_tokens
    assert done.usage.completion_tokens > 0 and used <= TINY_CONTEXT
    assert done.choices[0].finish_reason == "stop" or used == TINY_CONTEXT


# ---------------------------------------------------------------- LangChain


def test_langchain_chat_model_and_completion_llm(served):
    import langchain_openai  # a dev dependency: a missing one fails, it does not skip

    common = {"base_url": f"{served.http_url}/v1", "api_key": TEST_TOKEN, "max_retries": 0, "timeout": 60}

    chat = langchain_openai.ChatOpenAI(model="edgefleet", max_tokens=4, temperature=0, **common)
    reply = chat.invoke("hi")
    assert isinstance(reply.content, str) and reply.usage_metadata["output_tokens"] <= 4

    # The completion LLM sends every prompt as a list ("prompt": ["..."]), several per request in generate().
    llm = langchain_openai.OpenAI(model="edgefleet", max_tokens=3, temperature=0, **common)
    assert isinstance(llm.invoke("hi"), str)
    result = llm.generate(["one", "two two"])
    assert [len(g) for g in result.generations] == [1, 1]
    alone = langchain_openai.OpenAI(model="edgefleet", max_tokens=3, temperature=0, **common).invoke("two two")
    assert result.generations[1][0].text == alone
