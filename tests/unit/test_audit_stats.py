"""The privacy audit's statistics: AUC, Clopper–Pearson, the empirical ε lower bound and the verdict."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.audit.stats import (
    EpsilonBound,
    SettingResult,
    beta_quantile,
    betainc,
    clopper_pearson,
    epsilon_lower_bound,
    max_provable_epsilon,
    roc_auc,
    roc_curve,
    verdict,
)

scores = st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=40)


def _result(name, private, claimed, auc, eps_lb):
    bound = EpsilonBound(eps_lb, 0.0, "tpr/fpr", 0.5, 0.5, 0.5, 0.5)
    return SettingResult(name, private, claimed, 1e-5, auc, bound, 64, 64)


def test_perfect_separation_has_auc_1_and_reversed_auc_0():
    members, non_members = [0.1, 0.2, 0.3], [0.5, 0.6]

    assert roc_auc(members, non_members) == 1.0
    assert roc_auc(non_members, members) == 0.0


def test_identical_distributions_give_auc_near_one_half():
    rng = random.Random(0)
    a, b = [rng.gauss(0, 1) for _ in range(2000)], [rng.gauss(0, 1) for _ in range(2000)]

    assert roc_auc(a, b) == pytest.approx(0.5, abs=0.03)
    assert roc_auc([1.0] * 5, [1.0] * 7) == 0.5  # all ties


def test_auc_matches_the_pairwise_definition():
    members, non_members = [0.3, 0.1, 0.5, 0.5], [0.5, 0.2, 0.9]
    pairs = [(1.0 if m < n else 0.5 if m == n else 0.0) for m in members for n in non_members]

    assert roc_auc(members, non_members) == pytest.approx(sum(pairs) / len(pairs))


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (50, 96), (1, 200), (199, 200)])
def test_clopper_pearson_matches_scipy(k, n):
    stats = pytest.importorskip("scipy.stats")

    lo, hi = clopper_pearson(k, n)

    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_clopper_pearson_known_values_and_misuse():
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10))  # (α/2)^(1/n) closed form
    assert clopper_pearson(10, 10)[0] == pytest.approx(0.025 ** (1 / 10))
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)
    with pytest.raises(ValueError):
        clopper_pearson(0, 0)


@given(a=st.floats(0.5, 50), b=st.floats(0.5, 50), p=st.floats(0.001, 0.999))
@settings(max_examples=60, deadline=None)
def test_beta_quantile_inverts_betainc(a, b, p):
    assert betainc(a, b, beta_quantile(p, a, b)) == pytest.approx(p, abs=1e-9)


def test_perfect_attack_proves_exactly_the_size_ceiling():
    members, non_members = [0.0] * 50, [1.0] * 50

    bound = epsilon_lower_bound(members, non_members, delta=1e-5)

    assert bound.epsilon == pytest.approx(max_provable_epsilon(50, 50, 1e-5))
    assert bound.epsilon == pytest.approx(math.log((0.025 ** (1 / 50) - 1e-5) / (1 - 0.025 ** (1 / 50))))
    assert 2.5 < bound.epsilon < 2.7  # ≈ log(50 / 3.7): why the audit's claimed ε must be small


def test_a_useless_attack_proves_nothing():
    rng = random.Random(1)
    same = [rng.random() for _ in range(200)]

    assert epsilon_lower_bound(same[:100], same[100:], delta=1e-5).epsilon < 0.5
    assert epsilon_lower_bound([0.5] * 30, [0.5] * 30, delta=1e-5).epsilon == 0.0


@given(members=scores, non_members=scores, delta=st.sampled_from([0.0, 1e-5, 1e-2]))
@settings(max_examples=150, deadline=None)
def test_epsilon_lower_bound_never_exceeds_what_the_sample_size_can_show(members, non_members, delta):
    bound = epsilon_lower_bound(members, non_members, delta)

    assert 0.0 <= bound.epsilon <= max_provable_epsilon(len(members), len(non_members), delta) + 1e-9
    if bound.epsilon > 0:  # the reported bounds are the ones that prove it
        assert bound.epsilon == pytest.approx(math.log((bound.rate_lower - delta) / bound.rate_upper))


@given(members=scores, non_members=scores)
@settings(max_examples=100, deadline=None)
def test_auc_is_antisymmetric_and_roc_runs_corner_to_corner(members, non_members):
    assert roc_auc(members, non_members) + roc_auc(non_members, members) == pytest.approx(1.0)
    fpr, tpr = roc_curve(members, non_members)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert fpr == sorted(fpr) and tpr == sorted(tpr)


def test_verdict_passes_only_with_private_runs_in_bound_and_a_clearly_leaking_control():
    control = _result("no_dp", False, math.inf, 0.97, 2.5)
    record = _result("record_dp", True, 1.0, 0.52, 0.0)
    user = _result("user_dp", True, 1.0, 0.49, 0.1)

    assert verdict([control, record, user]).passed
    broken = _result("record_dp", True, 1.0, 0.95, 2.1)
    assert not verdict([control, broken, user]).passed
    assert not verdict([record, user]).passed  # no control: the attack's power is unknown
    weak = _result("no_dp", False, math.inf, 0.65, 0.8)  # does not break the claim: the audit shows nothing
    assert not verdict([weak, record, user]).passed
    assert any("record_dp" in r for r in verdict([control, broken]).reasons)
