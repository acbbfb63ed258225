"""Who takes part in a round, the quorum, and who is charged for what: the coordinator's pure rules."""

import pytest

from edgefleet.federation.round_rules import (
    QuorumRules,
    charges_at_reveal,
    charges_on_arrival,
    draw,
    left_out_of_the_sum,
    over_budget,
    quorum,
    threshold,
)
from edgefleet.train.accounting import Release

R = Release(1.0, 0.1, 10)
BIG = Release(0.5, 0.5, 100)
SECURE = QuorumRules(min_clients=2, min_fraction=0.6, secure=True)
CLEAR = QuorumRules(min_clients=1, min_fraction=0.5, secure=False)


def fits_unless_big(client, release):
    return release != BIG


@pytest.mark.parametrize(
    ("k", "rules", "need"),
    [
        (3, SECURE, 2),  # 0.6·3 → 2, t = 2
        (5, SECURE, 3),  # 0.6·5 = 3 (no float ceil to 4), t = 3
        (6, QuorumRules(2, 0.3, secure=True), 4),  # the Shamir threshold (a majority) dominates
        (6, QuorumRules(2, 0.3, secure=False), 2),  # in the clear it does not apply
        (2, QuorumRules(3, 0.5, secure=False), 2),  # never more than were sampled
    ],
)
def test_quorum_by_hand(k, rules, need):
    assert quorum(k, rules) == need


def test_threshold_is_a_majority_and_at_least_two():
    assert [threshold(k) for k in (1, 2, 3, 4, 5)] == [2, 2, 2, 3, 3]


def test_draw_samples_only_clients_within_budget_reproducibly():
    plans = {"a": R, "b": BIG, "c": R, "d": R}

    first = draw(plans, fits_unless_big, nodes=4, clients_per_round=2, rules=SECURE, seed="0/1/1")
    again = draw(plans, fits_unless_big, nodes=4, clients_per_round=2, rules=SECURE, seed="0/1/1")

    assert first == again and first.over_budget == ["b"] and first.available == 3
    assert len(first.sampled) == 2 and set(first.sampled) <= {"a", "c", "d"}
    assert first.sampled == sorted(first.sampled)


def test_too_few_within_budget_is_a_retry_while_the_fleet_could_still_make_it_and_final_once_it_cannot():
    unavailable_now = draw({"a": R}, fits_unless_big, nodes=3, clients_per_round=2, rules=SECURE, seed="s")
    spent = draw({"a": R, "b": BIG, "c": BIG}, fits_unless_big, nodes=3, clients_per_round=2, rules=SECURE, seed="s")

    assert unavailable_now.sampled == [] and not unavailable_now.final  # b and c may answer next time
    assert spent.sampled == [] and spent.final and spent.over_budget == ["b", "c"]


def test_over_budget_names_whoever_a_release_would_take_past_budget():
    assert over_budget({"x": BIG, "y": R, "a": BIG}, fits_unless_big) == ["a", "x"]


def test_in_the_clear_every_sampled_client_is_charged_on_arrival_a_straggler_as_planned():
    planned = {"a": R, "b": R, "c": R}
    arrived = {"a": BIG, "c": R}

    charged = charges_on_arrival(["a", "b", "c"], planned, arrived, secure=False)

    assert charged == {"a": BIG, "b": R, "c": R}  # b's update may still come in: never under-counted
    assert charges_on_arrival(["a", "b", "c"], planned, arrived, secure=True) == {}


def test_at_the_reveal_exactly_the_finishers_are_charged_what_they_reported():
    assert charges_at_reveal(["a", "c"], {"a": BIG, "b": R, "c": R}) == {"a": BIG, "c": R}


def test_a_malformed_update_is_left_out_of_the_sum_in_the_clear_and_under_secure_aggregation():
    arrived = {"a": R, "b": BIG, "liar": BIG}
    refused = {"liar": "liar's update is refused: 4 numbers where the layout holds 5"}

    clear = left_out_of_the_sum(arrived, refused, fits_unless_big, secure=False)
    secure = left_out_of_the_sum(arrived, refused, fits_unless_big, secure=True)

    assert clear == refused  # in the clear b's update was seen: it is charged and counts
    assert secure == refused | {"b": "its release would exceed its privacy budget"}  # stays masked for good
