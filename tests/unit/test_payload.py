"""The update payload: what a participant sends and what the coordinator and the audit read back."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.federation import payload
from edgefleet.federation.secagg import decode as fixed_point_decode
from edgefleet.federation.secagg import encode as fixed_point_encode

updates = st.lists(
    st.tuples(
        st.lists(st.floats(-10, 10), min_size=3, max_size=3),
        st.integers(1, 500),
        st.floats(0.0, 20.0),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=50, deadline=None)
@given(clients=updates)
def test_the_sum_of_weighted_payloads_decodes_to_the_weighted_means(clients):
    # Prepare
    payloads = [payload.encode_weighted(np.array(d), num_samples=n, loss=loss) for d, n, loss in clients]
    total_n = sum(n for _, n, _ in clients)

    # Execute
    total = payload.decode(sum(payloads))

    # Assert
    expected = sum(np.array(d) * n for d, n, _ in clients) / total_n
    np.testing.assert_allclose(total.mean_delta, expected, atol=1e-9)
    assert total.weight == total_n
    assert total.mean_loss == pytest.approx(sum(n * loss for _, n, loss in clients) / total_n)


def test_the_layout_is_the_weighted_update_then_the_weight_then_the_weighted_loss():
    out = payload.encode_weighted(np.array([1.0, -2.0]), num_samples=4, loss=0.5)

    assert out.tolist() == [4.0, -8.0, 4.0, 2.0]


def test_a_clipped_payload_is_bounded_by_c_counts_one_client_and_carries_no_loss():
    out = payload.decode(payload.encode_clipped(np.array([3.0, 4.0]), clip=1.0))

    assert np.linalg.norm(out.weighted_delta) == pytest.approx(1.0)
    assert (out.weight, out.weighted_loss) == (1.0, 0.0)


def test_a_payload_survives_the_fixed_point_of_secure_aggregation():
    sent = payload.encode_weighted(np.array([0.001, -0.25]), num_samples=7, loss=2.5)

    back = payload.decode(fixed_point_decode(fixed_point_encode(sent)))

    np.testing.assert_allclose(back.mean_delta, [0.001, -0.25], atol=1e-6)
    assert back.weight == 7 and back.mean_loss == pytest.approx(2.5, abs=1e-6)


def test_what_is_not_a_payload_is_refused_and_no_weight_means_no_mean():
    with pytest.raises(ValueError, match="flat vector"):
        payload.decode(np.zeros(2))
    empty = payload.Contribution(np.zeros(3), 0.0, 0.0)
    assert math.isnan(empty.mean_loss)
    with pytest.raises(ValueError, match="total weight"):
        empty.mean_delta  # noqa: B018


LAYOUT = payload.Layout(names=("a.lora_B", "b.lora_B"), sizes=(2, 1))  # 3 coordinates, then the trailer


@pytest.mark.parametrize(
    ("vector", "why"),
    [
        ([1.0, math.nan, 3.0, 2.0, 1.0], "NaN or infinite"),
        ([1.0, 2.0, math.inf, 2.0, 1.0], "NaN or infinite"),
        ([1.0, 2.0, 3.0, 0.0, 0.0], "weight 0.0 is not > 0"),
        ([1.0, 2.0, 3.0, -4.0, 1.0], "weight -4.0 is not > 0"),
        ([1.0, 2.0, 2.0, 1.0], "4 numbers where the layout holds 5"),
    ],
)
def test_a_payload_that_no_honest_client_sends_is_refused_naming_its_sender(vector, why):
    with pytest.raises(payload.MalformedPayload, match=why) as info:
        payload.decode(np.array(vector), LAYOUT, client="edge-2")

    assert info.value.client == "edge-2" and "edge-2" in str(info.value)


def test_the_layout_is_the_coordinators_own_the_tensor_names_and_sizes_of_its_adapter():
    import torch

    adapter = {"b.lora_B": torch.zeros(1), "a.lora_B": torch.zeros(2, 1), "a.lora_A": torch.zeros(4)}

    layout = payload.Layout.of(adapter, ["a.lora_B", "b.lora_B"])

    assert layout == LAYOUT and layout.length == 3 + payload.TRAILER


def test_check_refuses_names_or_a_masked_vector_that_do_not_fit_the_layout():
    good = payload.encode_weighted(np.ones(3), num_samples=2, loss=1.0)
    masked = np.zeros(LAYOUT.length, dtype=np.uint64)
    payload.check(good, LAYOUT.names, LAYOUT, masked=False, client="edge-1")  # fits: no error
    payload.check(masked, list(LAYOUT.names), LAYOUT, masked=True, client="edge-1")

    with pytest.raises(payload.MalformedPayload, match=r"edge-1.*names tensors \['x'\] and lacks \['b.lora_B'\]"):
        payload.check(good, ["a.lora_B", "x"], LAYOUT, masked=False, client="edge-1")
    with pytest.raises(payload.MalformedPayload, match="6 numbers where the layout holds 5"):
        payload.check(np.zeros(6, dtype=np.uint64), LAYOUT.names, LAYOUT, masked=True, client="edge-1")
    with pytest.raises(payload.MalformedPayload, match="not a masked vector"):
        payload.check(good, LAYOUT.names, LAYOUT, masked=True, client="edge-1")
    with pytest.raises(payload.MalformedPayload, match="not a flat vector"):
        payload.check("hello", LAYOUT.names, LAYOUT, masked=False, client="edge-1")
    with pytest.raises(payload.MalformedPayload, match="orders the tensors otherwise"):
        payload.check(good, ["b.lora_B", "a.lora_B"], LAYOUT, masked=False, client="edge-1")


def test_refusals_name_each_client_whose_update_does_not_fit_and_only_those():
    good = payload.encode_weighted(np.ones(3), num_samples=2, loss=1.0)
    sent = {"edge-1": (good, LAYOUT.names), "edge-2": (good[:-1], LAYOUT.names), "edge-3": (good, ["x"])}

    refused = payload.refusals(sent, LAYOUT, masked=False)

    assert sorted(refused) == ["edge-2", "edge-3"] and all(c in why for c, why in refused.items())
