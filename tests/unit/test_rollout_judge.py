"""The rollout's verdict: canaries that err, miss their SLA, score worse on the chat probe or get
worse ratings from their users are rolled back."""

import math

import pytest

from edgefleet.platform.feedback import Tally
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


def test_users_rating_the_canary_worse_roll_it_back_once_there_are_enough_ratings():
    rated = GroupHealth(30, 0, 30, 4.0, ratings=Tally(good=18, bad=2))  # 90% good
    verdict = judge(GroupHealth(30, 0, 30, 4.0, ratings=Tally(good=6, bad=14)), rated)
    assert not verdict.promote and "users rated 30% of answers good vs 90%" in verdict.reason
    assert judge(GroupHealth(30, 0, 30, 4.0, ratings=Tally(good=16, bad=4)), rated).promote  # within 15 points
    few = judge(GroupHealth(30, 0, 30, 4.0, ratings=Tally(good=0, bad=9)), rated)  # 9 < min_ratings
    assert few.promote and "too few ratings to judge on (9 canary, 20 rest" in few.reason
    assert not judge(
        GroupHealth(30, 0, 30, 4.0, ratings=Tally(good=0, bad=9)), rated, RolloutLimits(min_ratings=5)
    ).promote


class FakeRegistry:
    """A registry double holding only the model name (building a controller reads nothing else)."""

    name = "edgefleet-edge-llm"


def test_the_controller_is_built_from_the_config_and_what_is_passed_overrides_it(tmp_path):
    from edgefleet.config import parse_config
    from edgefleet.serve.rollout import RolloutController
    from tests.conftest import make_test_config_dict

    cfg = parse_config(make_test_config_dict() | {"cache_dir": str(tmp_path)})  # no held-out chats there
    registry = FakeRegistry()

    ctl = RolloutController.from_config(cfg, registry)
    given = RolloutController.from_config(cfg, registry, canaries=["edge-2"], window_s=1.0, probe=["x"], deadline_ms=9)

    assert ctl.registry is registry and ctl.canaries == (cfg.mlflow.canary_nodes or ["edge-1"])
    assert ctl.window_s == cfg.mlflow.rollout_window_s and len(ctl.probe) == 4  # the demo documents stand in
    assert (given.canaries, given.window_s, given.probe, given.deadline_ms) == (["edge-2"], 1.0, ["x"], 9)
    assert ctl.canary_timeout_s == 3 * ctl.window_s + ctl.swap_timeout_s  # a canary's deadline, by default


def test_canaries_must_be_edge_nodes_and_leave_one_to_compare_with(tmp_path):
    import pytest

    from edgefleet.config import parse_config
    from edgefleet.serve.rollout import RolloutController
    from tests.conftest import make_test_config_dict

    cfg = parse_config(make_test_config_dict() | {"cache_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="not edge nodes"):
        RolloutController(cfg, FakeRegistry(), canaries=["edge-9"], probe=["x"])
    with pytest.raises(ValueError, match="outside the canary set"):
        RolloutController(cfg, FakeRegistry(), canaries=["edge-1", "edge-2", "edge-3"], probe=["x"])


def test_an_sla_drop_that_chance_explains_does_not_roll_back():
    """2 late of 11 on the canary against 0 of 22 (a demo's window, p = 0.10) is noise; 20 of 30
    against 30 of 30 (p < 0.001) is a regression."""
    from edgefleet.serve.rollout import fewer_by_chance

    assert judge(GroupHealth(11, 0, 9, 4.0), GroupHealth(22, 0, 22, 4.0)).promote
    verdict = judge(GroupHealth(30, 0, 20, 4.0), REST)
    assert not verdict.promote and "SLA attainment" in verdict.reason and "p = 0.000" in verdict.reason
    assert fewer_by_chance(9, 11, 22, 22) == pytest.approx(0.1042, abs=1e-4)  # scipy's fisher_exact, 'less'
    assert fewer_by_chance(5, 5, 5, 5) == 1.0 and fewer_by_chance(0, 0, 5, 5) == 1.0


def test_a_collapse_of_the_sla_counts_even_in_a_window_too_short_for_the_test():
    """0 of 3 on time against 3 of 3 (p = 0.05): too few requests for Fisher's test at 0.05, but a
    drop of more than half counts whatever the sample."""
    assert not judge(GroupHealth(3, 0, 0, 4.0), GroupHealth(3, 0, 3, 4.0)).promote
    assert not judge(GroupHealth(2, 0, 0, 4.0), GroupHealth(0, 0, 0, 4.0)).promote  # the rest sent nothing
