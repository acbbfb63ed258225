"""Secure aggregation: the sum comes out exact (to fixed point), one masked vector looks uniform,
a client that drops after masking is recovered from the survivors' shares, and tampering is caught."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from edgefleet.federation.secagg import (
    SCALE_BITS,
    RevealedShare,
    SecAggClient,
    SecAggError,
    SecAggServer,
    TamperedShare,
    decode,
    encode,
    reconstruct,
    shamir_combine,
    shamir_split,
)

TAG = b"run-1/round-1/attempt-1"


def setup_round(n: int, length: int, threshold: int):
    clients = [SecAggClient(f"edge-{i}", round_tag=TAG) for i in range(1, n + 1)]
    roster = [c.advertise() for c in clients]
    server = SecAggServer(roster, threshold=threshold, round_tag=TAG, length=length)
    inbox = server.route({c.client_id: c.share_keys(roster, threshold=threshold) for c in clients})
    return clients, server, inbox


def reveal_all(clients, server, inbox):
    return {
        c.client_id: c.reveal(inbox.get(c.client_id, {}), server.survivors(), server.dropped())
        for c in clients
        if c.client_id in server.survivors()
    }


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 6), data=st.data())
def test_the_unmasked_sum_equals_the_plain_sum_within_fixed_point_precision(n, data):
    length = data.draw(st.integers(1, 40))
    vectors = [np.array(data.draw(st.lists(st.floats(-100, 100), min_size=length, max_size=length))) for _ in range(n)]
    clients, server, inbox = setup_round(n, length, threshold=max(2, n // 2 + 1))
    for c, x in zip(clients, vectors, strict=True):
        server.add_masked(c.client_id, c.mask(x))

    total = server.unmask(reveal_all(clients, server, inbox))

    np.testing.assert_allclose(total, np.sum(vectors, axis=0), atol=n * 2.0**-SCALE_BITS)


def test_a_single_masked_vector_is_statistically_indistinguishable_from_uniform():
    clients, _, _ = setup_round(3, 1 << 14, threshold=2)
    structured = np.zeros(1 << 14)  # the most recognisable input there is

    masked = clients[0].mask(structured)

    top_byte = (masked >> np.uint64(56)).astype(np.int64)
    low_byte = (masked & np.uint64(0xFF)).astype(np.int64)
    for byte in (top_byte, low_byte):
        assert chisquare(np.bincount(byte, minlength=256)).pvalue > 1e-4
    bits = np.unpackbits(masked.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.005  # 2^20 bits: 5 standard deviations
    assert not np.array_equal(masked, encode(structured))


def test_with_one_of_five_clients_dropping_after_masking_the_survivors_sum_is_recovered():
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=64) for _ in range(5)]
    clients, server, inbox = setup_round(5, 64, threshold=3)
    masked = [c.mask(x) for c, x in zip(clients, vectors, strict=True)]
    for c, y in list(zip(clients, masked, strict=True))[:4]:  # edge-5 masked its update, then vanished
        server.add_masked(c.client_id, y)

    total = server.unmask(reveal_all(clients, server, inbox))

    assert server.dropped() == ["edge-5"]
    np.testing.assert_allclose(total, np.sum(vectors[:4], axis=0), atol=5 * 2.0**-SCALE_BITS)
    with pytest.raises(SecAggError, match="after the survivors were fixed"):
        server.add_masked("edge-5", masked[4])  # its late vector must not be summed


def test_a_tampered_ciphertext_is_refused_by_its_recipient_and_the_sum_still_comes_out():
    clients, server, inbox = setup_round(3, 4, threshold=2)
    for c in clients:
        server.add_masked(c.client_id, c.mask(np.ones(4)))
    blob = bytearray(inbox["edge-2"]["edge-1"])
    blob[-1] ^= 1  # the coordinator (or the network) flips one bit in transit
    inbox["edge-2"]["edge-1"] = bytes(blob)

    revealed = reveal_all(clients, server, inbox)

    assert clients[1].rejected == ["edge-1"]  # detected and named, not silently used
    assert not any(s.owner == "edge-1" for s in revealed["edge-2"])
    np.testing.assert_allclose(server.unmask(revealed), np.full(4, 3.0))  # edge-1 and edge-3 hold t=2 shares


def test_a_client_answers_one_split_of_the_roster_so_no_client_can_be_fully_unmasked():
    clients, server, inbox = setup_round(4, 3, threshold=3)
    a = clients[0]
    a.mask(np.array([1.0, 2.0, 3.0]))
    first = a.reveal(inbox["edge-1"], ["edge-1", "edge-2", "edge-3"], ["edge-4"])

    assert a.reveal(inbox["edge-1"], ["edge-1", "edge-2", "edge-3"], ["edge-4"]) == first  # a retry is fine
    with pytest.raises(SecAggError, match="another split"):  # edge-2 moved to dropped: its s would be revealed too
        a.reveal(inbox["edge-1"], ["edge-1", "edge-3", "edge-4"], ["edge-2"])
    with pytest.raises(SecAggError, match="already masked"):
        a.mask(np.zeros(3))  # a second vector under the same masks would leak the difference


def test_a_tampered_revealed_share_is_detected_and_outvoted_or_refused():
    vectors = [np.full(8, float(i)) for i in range(1, 5)]
    clients, server, inbox = setup_round(4, 8, threshold=2)
    for c, x in zip(clients, vectors, strict=True):
        server.add_masked(c.client_id, c.mask(x))
    revealed = reveal_all(clients, server, inbox)
    liar = revealed["edge-3"]
    revealed["edge-3"] = [RevealedShare(s.owner, s.kind, s.x, (s.y + 1)) if s.owner == "edge-1" else s for s in liar]

    total = server.unmask(revealed)  # 3 honest shares of edge-1's b remain: a consistent pair is found

    np.testing.assert_allclose(total, np.sum(vectors, axis=0), atol=1e-6)
    assert "edge-3→edge-1" in server.tampered

    shares = shamir_split(b"\x07" * 32, [1, 2, 3], threshold=3)
    shares[2] += 1
    with pytest.raises(TamperedShare, match="rebuild the published secret"):
        reconstruct(shares, 3, lambda v: v == int.from_bytes(b"\x07" * 32, "big"))


def test_the_client_never_reveals_both_secrets_of_one_client_nor_unmasks_below_threshold():
    clients, server, inbox = setup_round(3, 4, threshold=3)
    with pytest.raises(SecAggError, match="both secrets"):
        clients[0].reveal(inbox["edge-1"], ["edge-1", "edge-2"], ["edge-2", "edge-3"])
    with pytest.raises(SecAggError, match="split this round's roster"):
        clients[0].reveal(inbox["edge-1"], ["edge-1", "edge-2"], [])
    with pytest.raises(SecAggError, match="listed as dropped"):
        clients[0].reveal(inbox["edge-1"], ["edge-2", "edge-3"], ["edge-1"])
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        clients[0].reveal(inbox["edge-1"], ["edge-1", "edge-2"], ["edge-3"])


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(2, 7), data=st.data())
def test_any_threshold_of_shamir_shares_rebuilds_the_secret(secret, n, data):
    t = data.draw(st.integers(1, n))
    shares = shamir_split(secret, list(range(1, n + 1)), t)
    subset = data.draw(st.lists(st.sampled_from(sorted(shares)), min_size=t, max_size=t, unique=True))

    assert shamir_combine({x: shares[x] for x in subset}) == int.from_bytes(secret, "big")


def test_fixed_point_round_trips_and_refuses_what_it_cannot_hold():
    x = np.array([-1.5, 0.0, 3.25, 1e-3])
    np.testing.assert_allclose(decode(encode(x)), x, atol=2.0**-SCALE_BITS)
    with pytest.raises(SecAggError, match="finite"):
        encode(np.array([np.nan]))
