"""The privacy ledger composes with Opacus' accountant, is durable, counts a round once, and no
sequence of rounds takes any client past its budget."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.federation.ledger import PrivacyLedger
from edgefleet.train.accounting import Release, composed_epsilon

R = Release(noise_multiplier=1.0, sample_rate=0.05, steps=50)


def test_composition_is_tighter_than_summing_per_round_epsilons():
    one = composed_epsilon([R], 1e-5)
    five = composed_epsilon([R] * 5, 1e-5)

    assert one < five < 5 * one


def test_the_ledger_survives_a_restart_and_counts_a_round_once(tmp_path):
    path = tmp_path / "run" / "ledger.sqlite"
    a = PrivacyLedger(path, budget_epsilon=50, delta=1e-5)
    a.record("edge-1", 1, R)
    a.close()

    b = PrivacyLedger(path, budget_epsilon=50, delta=1e-5)
    b.record("edge-1", 1, R)  # the restarted coordinator records round 1 again

    assert b.releases("edge-1") == [R] and b.epsilon("edge-1") == pytest.approx(composed_epsilon([R], 1e-5))


def test_a_client_whose_next_round_would_exceed_the_budget_is_not_eligible():
    ledger = PrivacyLedger(":memory:", budget_epsilon=composed_epsilon([R] * 2, 1e-5) + 1e-9, delta=1e-5)
    for round_id in (1, 2):
        ledger.record("edge-1", round_id, R)

    assert not ledger.can_take_part("edge-1", R) and ledger.can_take_part("edge-2", R)
    with pytest.raises(ValueError, match="exceed the privacy budget"):
        ledger.record("edge-1", 3, R)


def test_no_noise_means_infinite_epsilon():
    assert composed_epsilon([Release(0.0, 0.1, 1)], 1e-5) == float("inf")


releases = st.builds(
    Release, noise_multiplier=st.floats(0.3, 3.0), sample_rate=st.floats(0.001, 0.3), steps=st.integers(1, 200)
)


@settings(max_examples=20, deadline=None)
@given(budget=st.floats(0.5, 20.0), rounds=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), releases), max_size=10))
def test_no_sequence_of_rounds_takes_any_client_past_its_budget(budget, rounds):
    ledger = PrivacyLedger(":memory:", budget_epsilon=budget, delta=1e-5)
    for round_id, (client, release) in enumerate(rounds):
        if ledger.can_take_part(client, release):  # the coordinator samples only eligible clients
            ledger.record(client, round_id, release)

    assert all(ledger.epsilon(c) <= budget for c in ("a", "b", "c"))


def test_a_retried_round_whose_first_attempt_was_seen_is_charged_for_both_attempts():
    ledger = PrivacyLedger(":memory:", budget_epsilon=50, delta=1e-5)
    ledger.record("edge-1", 1, R, attempt=1)
    ledger.record("edge-1", 1, R, attempt=2)
    ledger.record("edge-1", 1, R, attempt=2)  # a restart records attempt 2 again: counted once

    assert ledger.releases("edge-1") == [R, R]


def test_a_release_that_already_happened_is_recorded_even_past_the_budget():
    ledger = PrivacyLedger(":memory:", budget_epsilon=composed_epsilon([R], 1e-5) + 1e-9, delta=1e-5)
    ledger.record("edge-1", 1, R)

    ledger.record("edge-1", 2, R, force=True)  # never under-count what was released

    assert len(ledger.releases("edge-1")) == 2 and ledger.epsilon("edge-1") > ledger.budget


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_composition_is_exactly_what_opacus_accountant_reports(accountant):
    from opacus.accountants import create_accountant

    history = [R, Release(0.8, 0.1, 7), R]
    acc = create_accountant(accountant)
    acc.history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in history]

    assert composed_epsilon(history, 1e-5, accountant) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
