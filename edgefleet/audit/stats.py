"""The statistics of a privacy audit: ROC AUC, Clopper–Pearson bounds and an empirical ε lower bound.

Pure Python (``math`` only): no torch, numpy or scipy, so the arithmetic is unit- and property-tested
on its own. :mod:`edgefleet.audit.run` trains the models and produces the scores.

The method is Jagielski et al., "Auditing Differentially Private Machine Learning: How Private is
Private SGD?" (NeurIPS 2020) and Nasr et al., "Adversary Instantiation: Lower Bounds for
Differentially Private Machine Learning" (S&P 2021). An (ε, δ)-DP mechanism bounds every
membership test: TPR ≤ e^ε·FPR + δ, and TNR ≤ e^ε·FNR + δ (Kairouz et al. 2015). A test that does
better at some threshold, with TPR and FPR replaced by their one-sided-safe Clopper–Pearson bounds
(lower TPR, upper FPR), *proves* ε ≥ log((TPR_lo − δ) / FPR_hi) at that confidence. The bound is
a lower bound on the leakage, never a proof of privacy: a weak attack shows little.

How far it can go: with m non-members and a perfect attack the upper FPR bound at 0 false positives
is 1 − (α/2)^(1/m) ≈ 3.7/m at 95 %, so no audit with m non-members can show ε above about
log(m / 3.7) (:func:`max_provable_epsilon`): 3.3 for 100. A claimed ε above that is not checked at all.

Scores: lower means "more likely a member" (a canary's loss after training minus before).

Example:
    >>> auc = roc_auc([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])
    >>> auc
    1.0
    >>> bound = epsilon_lower_bound([0.1, 0.2, 0.3] * 20, [0.5, 0.6, 0.7] * 20, delta=1e-5)
    >>> bound.epsilon == max_provable_epsilon(60, 60, delta=1e-5)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95  # of each Clopper–Pearson interval; the two used together hold at ≥ 90 % (union bound)


@dataclass(frozen=True)
class EpsilonBound:
    """The best threshold of a membership test and the ε it proves (0 when it proves nothing)."""

    epsilon: float  # the empirical lower bound on ε, ≥ 0
    threshold: float  # "member" iff score ≤ threshold (or > it, for the complementary test)
    direction: str  # "tpr/fpr" or "tnr/fnr": which of the two DP inequalities was violated
    tpr: float  # observed, at that threshold
    fpr: float
    rate_lower: float  # the Clopper–Pearson bounds used: TPR_lo and FPR_hi (TNR_lo and FNR_hi for "tnr/fnr")
    rate_upper: float


@dataclass(frozen=True)
class SettingResult:
    """One audited setting, its scores pooled over the repeats."""

    name: str  # "no_dp", "record_dp", "user_dp"
    private: bool
    epsilon_claimed: float  # what the accountant reports (∞ without DP)
    delta: float
    auc: float
    bound: EpsilonBound
    members: int  # canaries trained on, over all repeats
    non_members: int

    @property
    def epsilon_lower(self) -> float:
        return self.bound.epsilon

    @property
    def within_bound(self) -> bool:
        """The attack stays inside TPR ≤ e^ε·FPR + δ at every threshold (at the confidence used)."""
        return self.bound.epsilon <= self.epsilon_claimed


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]  # why it failed; empty when it passed


def roc_auc(members: Sequence[float], non_members: Sequence[float]) -> float:
    """P(a member scores lower than a non-member), ties counting half (the Mann–Whitney U statistic)."""
    if not members or not non_members:
        raise ValueError("need at least one member and one non-member score")
    ranked = sorted([(s, 1) for s in members] + [(s, 0) for s in non_members])
    # Average ranks over ties, then U = Σ ranks of non-members − m(m+1)/2 counts (member < non-member) pairs.
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + 1 + j) / 2  # 1-based ranks i+1 … j
        rank_sum += mean_rank * sum(1 for _, is_member in ranked[i:j] if not is_member)
        i = j
    m = len(non_members)
    return (rank_sum - m * (m + 1) / 2) / (len(members) * m)


def clopper_pearson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact two-sided binomial interval (lower, upper) for ``successes`` out of ``trials``."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    lower = 0.0 if successes == 0 else beta_quantile(tail, successes, trials - successes + 1)
    upper = 1.0 if successes == trials else beta_quantile(1 - tail, successes + 1, trials - successes)
    return lower, upper


def max_provable_epsilon(members: int, non_members: int, delta: float, confidence: float = CONFIDENCE) -> float:
    """The ε a perfect attack proves with these counts: no audit of this size can show more."""

    def perfect(n: int, m: int) -> float:  # every one of n positives caught, none of m negatives
        caught = clopper_pearson(n, n, confidence)[0] - delta
        return math.log(caught / clopper_pearson(0, m, confidence)[1]) if caught > 0 else 0.0

    return max(0.0, perfect(members, non_members), perfect(non_members, members))  # ≤ 0: it can prove nothing


def epsilon_lower_bound(
    members: Sequence[float], non_members: Sequence[float], delta: float, confidence: float = CONFIDENCE
) -> EpsilonBound:
    """The largest ε the threshold attack "member iff score ≤ t" proves, over every threshold t.

    Both DP inequalities are tried at each threshold: log((TPR_lo − δ)/FPR_hi) and its mirror
    log((TNR_lo − δ)/FNR_hi), with TPR_lo, TNR_lo lower and FPR_hi, FNR_hi upper Clopper–Pearson bounds.
    """
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    n, m = len(members), len(non_members)
    if n == 0 or m == 0:
        raise ValueError("need at least one member and one non-member score")
    best = EpsilonBound(0.0, math.inf, "tpr/fpr", 1.0, 1.0, 0.0, 1.0)
    cache: dict[tuple[int, int], tuple[float, float]] = {}

    def cp(k: int, total: int) -> tuple[float, float]:
        if (k, total) not in cache:
            cache[(k, total)] = clopper_pearson(k, total, confidence)
        return cache[(k, total)]

    for t in sorted(set(members) | set(non_members)):
        tp = sum(1 for s in members if s <= t)  # O(n) per threshold: a few hundred canaries at most
        fp = sum(1 for s in non_members if s <= t)
        tpr_lo, fpr_hi = cp(tp, n)[0], cp(fp, m)[1]
        tnr_lo, fnr_hi = cp(m - fp, m)[0], cp(n - tp, n)[1]
        for direction, lower, upper in (("tpr/fpr", tpr_lo, fpr_hi), ("tnr/fnr", tnr_lo, fnr_hi)):
            if lower - delta > 0 and upper > 0:
                eps = math.log((lower - delta) / upper)
                if eps > best.epsilon:
                    best = EpsilonBound(eps, t, direction, tp / n, fp / m, lower, upper)
    return best


def verdict(results: Sequence[SettingResult], *, auc_margin: float = 0.2) -> Verdict:
    """Pass iff every private setting stays within its claimed ε, and the non-private control leaks
    clearly: its ε lower bound exceeds every claimed ε and its AUC beats every private AUC by
    ``auc_margin``. Without the control, the audit has shown nothing about its own power: fail."""
    reasons = []
    private = [r for r in results if r.private]
    control = [r for r in results if not r.private]
    for r in private:
        if not r.within_bound:
            reasons.append(f"{r.name}: the attack proves ε ≥ {r.epsilon_lower:.2f} > claimed {r.epsilon_claimed:.2f}")
    if not private:
        reasons.append("no private setting was audited")
    if not control:
        reasons.append("no non-private control: the attack's power is unknown")
    for c in control:
        if private and not leaks_clearly(c, private, auc_margin=auc_margin):
            reasons.append(
                f"{c.name}: ε ≥ {c.epsilon_lower:.2f} and AUC {c.auc:.3f} do not clearly exceed the "
                f"private runs' claimed ε {max(r.epsilon_claimed for r in private):.2f} and AUC "
                f"{max(r.auc for r in private):.3f} (+{auc_margin}): the attack cannot tell leaking "
                "from private at this size"
            )
    return Verdict(not reasons, tuple(reasons))


def leaks_clearly(control: SettingResult, private: Sequence[SettingResult], *, auc_margin: float = 0.2) -> bool:
    """The non-private control breaks every private setting's claim, and out-attacks each by ``auc_margin``."""
    return (
        control.epsilon_lower > max(r.epsilon_claimed for r in private)
        and control.auc >= max(r.auc for r in private) + auc_margin
    )


def roc_curve(members: Sequence[float], non_members: Sequence[float]) -> tuple[list[float], list[float]]:
    """(FPR, TPR) of "member iff score ≤ t" over every threshold, from (0, 0) to (1, 1)."""
    fpr, tpr = [0.0], [0.0]
    for t in sorted(set(members) | set(non_members)):
        fpr.append(sum(1 for s in non_members if s <= t) / len(non_members))
        tpr.append(sum(1 for s in members if s <= t) / len(members))
    return fpr, tpr


# ---------------------------------------------------------------- the beta quantile, without scipy


def beta_quantile(p: float, a: float, b: float) -> float:
    """x with I_x(a, b) = p (the Beta(a, b) quantile), by bisection on :func:`betainc` (1e-12)."""
    if not 0 <= p <= 1 or a <= 0 or b <= 0:
        raise ValueError(f"need p in [0, 1] and a, b > 0, got p={p}, a={a}, b={b}")
    lo, hi = 0.0, 1.0
    for _ in range(60):  # 2^-60: far below any ε a few hundred canaries could resolve
        mid = (lo + hi) / 2
        if betainc(a, b, mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (Numerical Recipes' continued fraction)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 − I_{1−x}(b,a) past it.
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < eps:
            break
    return h
