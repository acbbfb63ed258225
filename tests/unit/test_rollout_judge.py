"""The rollout's verdict: canaries that err, miss their SLA or score worse on the probe set are rolled back."""

import math

from edgefleet.serve.rollout import GroupHealth, RolloutLimits, judge

REST = GroupHealth(requests=30, errors=0, sla_met=30, probe_loss=4.00)


def test_a_canary_as_good_as_the_rest_is_promoted():
    verdict = judge(GroupHealth(30, 0, 30, 4.01), REST)
    assert verdict.promote and "held up" in verdict.reason


def test_a_worse_probe_loss_rolls_back_and_says_why():
    verdict = judge(GroupHealth(30, 0, 30, 4.50), REST)
    assert not verdict.promote and "probe loss 4.500 vs 4.000" in verdict.reason


def test_errors_and_missed_slas_roll_back():
    assert not judge(GroupHealth(30, 3, 27, 4.0), REST).promote
    assert not judge(GroupHealth(30, 0, 20, 4.0), REST).promote


def test_a_nan_probe_never_passes_and_limits_are_configurable():
    assert not judge(GroupHealth(30, 0, 30, math.nan), REST).promote
    assert judge(GroupHealth(30, 0, 30, 4.3), REST, RolloutLimits(max_probe_loss_increase=0.5)).promote
