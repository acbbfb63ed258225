"""Hedging policy: when a hedge is planned, and the token bucket that caps how many are sent."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.serve.batch_model import QUIET_GAP_MS
from edgefleet.serve.hedging import HedgeBudget, plan_hedge, predict_ttft_ms
from edgefleet.serve.router import FleetView, ResidualTracker, RouteRequest, TargetState

EDGE = TargetState("edge-1", "edge", rtt_ms=5, prefill_ms_per_token=1.0, decode_ms_per_step=((1, 10.0),))
CLOUD = TargetState("cloud", "cloud", rtt_ms=60, prefill_ms_per_token=0.5, decode_ms_per_step=((1, 8.0),))
NO_MARGIN = ResidualTracker(initial_fraction=0.0)


def test_ttft_is_the_prediction_for_one_token():
    assert predict_ttft_ms(EDGE, RouteRequest(prompt_tokens=20, max_new_tokens=500)) == pytest.approx(
        5 + QUIET_GAP_MS + 20 + 10
    )


def test_hedge_is_planned_when_the_cloud_still_fits_after_waiting_for_the_edge():
    req = RouteRequest(deadline_ms=1000, prompt_tokens=20, max_new_tokens=50)  # cloud: 60 + 10 + 400 = 470 ms

    plan = plan_hedge("edge-1", req, FleetView((EDGE, CLOUD)), NO_MARGIN)

    assert plan.cloud_id == "cloud" and plan.after_ms == pytest.approx(35.0 + QUIET_GAP_MS)


@pytest.mark.parametrize(
    ("chosen", "request_", "view"),
    [
        ("edge-1", RouteRequest(deadline_ms=400, prompt_tokens=20, max_new_tokens=50), (EDGE, CLOUD)),  # too late
        ("cloud", RouteRequest(deadline_ms=5000, max_new_tokens=5), (EDGE, CLOUD)),  # already on the cloud
        ("edge-1", RouteRequest(deadline_ms=0, max_new_tokens=5), (EDGE, CLOUD)),  # no deadline to protect
        ("edge-1", RouteRequest(route="edge", deadline_ms=5000, max_new_tokens=5), (EDGE, CLOUD)),  # pinned
        (
            "edge-1",
            RouteRequest(deadline_ms=5000, max_new_tokens=5),
            (EDGE, TargetState("cloud", "cloud", healthy=False)),
        ),  # no healthy cloud
    ],
)
def test_no_hedge_when_it_cannot_help_or_is_not_wanted(chosen, request_, view):
    assert plan_hedge(chosen, request_, FleetView(view), NO_MARGIN) is None


@given(st.lists(st.booleans(), min_size=1, max_size=2000))
def test_budget_never_hedges_more_than_its_share_plus_burst(wants):
    budget = HedgeBudget(share=0.05, burst=2.0)

    for want in wants:
        budget.on_request()
        if want:
            budget.try_spend()

    assert budget.hedges <= 0.05 * budget.requests + 1e-9
    assert 0 <= budget.rate <= 0.05 + 1e-9


def test_budget_allows_one_hedge_per_twenty_requests():
    budget = HedgeBudget(share=0.05)

    spent = []
    for _ in range(100):
        budget.on_request()
        spent.append(budget.try_spend())

    assert sum(spent) == 5 and spent[19] and not any(spent[:19])
