"""Fuzzed input against the live Gateway: every GenerateRequest field, and raw bytes, over real gRPC.

The property: every call ends with a proper status (OK with an answer, or INVALID_ARGUMENT /
RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED with a message), never UNKNOWN or INTERNAL, and the server
still answers a normal request afterwards. Bounded: a few dozen examples per strategy, short deadlines.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ray = pytest.importorskip("ray")

from edgefleet._proto import inference_pb2 as pb  # noqa: E402
from edgefleet._proto import inference_pb2_grpc as pbg  # noqa: E402
from tests.conftest import TEST_TOKEN  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
METHOD = "/edgefleet.v1.InferenceService/Generate"
PROPER = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)

text = st.text(max_size=64) | st.sampled_from(["", " ", "\x00", "\ud7ff" * 3, "x" * 5000, "<|im_end|>"])
u32 = st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 2, 512, 2048, 2049, 2**31, 2**32 - 1])
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
enum = st.integers(-(2**31), 2**31 - 1) | st.sampled_from([0, 1, 2, 3, -1])


@st.composite
def requests(draw) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        prompt=draw(text),
        messages=[
            pb.ChatMessage(
                role=draw(st.sampled_from(["user", "system", "assistant", "", "tool", "👾"])), content=draw(text)
            )
            for _ in range(draw(st.integers(0, 3)))
        ],
        max_new_tokens=draw(st.integers(0, 8) | u32),
        temperature=draw(floats),
        top_p=draw(floats),
        stop=draw(st.lists(text, max_size=5)),
        deadline_ms=draw(u32),
        priority=draw(enum),
        route=draw(enum),
        site=draw(text),
        request_id=draw(text),
        mode=draw(enum),
    )
    if draw(st.booleans()):
        req.seed = draw(st.integers(0, 2**64 - 1))
    return req


@pytest.fixture(scope="module")
def channel(served):
    with grpc.insecure_channel(served.grpc_address) as ch:
        yield ch


MD = [("application", "edgefleet"), ("authorization", f"Bearer {TEST_TOKEN}")]


def _call(channel, request_bytes: bytes, stream: bool) -> tuple[grpc.StatusCode, str]:
    if stream:
        call = channel.unary_stream(METHOD + "Stream", request_serializer=None, response_deserializer=None)
        try:
            for _ in call(request_bytes, metadata=MD, timeout=20):
                pass
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details() or ""
    call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    try:
        call(request_bytes, metadata=MD, timeout=20)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def _still_serves(channel) -> None:
    stub = pbg.InferenceServiceStub(channel)
    answer = stub.Generate(pb.GenerateRequest(prompt="still there?", max_new_tokens=2), metadata=MD, timeout=60)
    assert answer.usage.completion_tokens > 0


@FUZZ
@given(request=requests(), stream=st.booleans())
def test_every_fuzzed_request_gets_a_proper_status(channel, request, stream):
    code, details = _call(channel, request.SerializeToString(), stream)
    assert code in PROPER, f"{code.name}: {details} for {request}"
    if code != grpc.StatusCode.OK:
        assert details.strip(), f"{code.name} without a message"


@FUZZ
@given(raw=st.binary(max_size=256), stream=st.booleans())
def test_raw_bytes_get_a_proper_status(channel, raw, stream):
    code, details = _call(channel, raw, stream)
    # Bytes that happen to parse are a (strange) request; the rest must be INVALID_ARGUMENT, not a crash.
    assert code in PROPER, f"{code.name}: {details} for {raw!r}"


def test_the_server_answers_a_normal_request_after_the_fuzzing(channel):
    _still_serves(channel)
