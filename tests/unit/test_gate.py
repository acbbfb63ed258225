"""The promotion gate: better held-out loss by the margin, and nobody over budget."""

from edgefleet.mlflow.gate import gate


def test_the_first_version_is_promoted():
    assert gate(3.5, None, margin=0.01, within_budget=True).promote


def test_a_candidate_must_beat_the_champion_by_the_margin():
    assert gate(3.40, 3.50, margin=0.05, within_budget=True).promote
    held = gate(3.48, 3.50, margin=0.05, within_budget=True)
    assert not held.promote and "does not beat champion 3.5000 by 0.05" in held.reason


def test_a_client_over_budget_blocks_promotion_whatever_the_loss():
    decision = gate(1.0, 3.5, margin=0.0, within_budget=False)
    assert not decision.promote and "privacy budget" in decision.reason


def test_a_non_finite_loss_is_never_promoted():
    assert not gate(float("nan"), None, margin=0.0, within_budget=True).promote
