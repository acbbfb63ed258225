"""Aggregation rules against hand computations, and robustness to one 1e6-scaled client."""

import numpy as np
import pytest
import torch

from edgefleet.federation import payload
from edgefleet.federation.strategies import (
    ClientUpdate,
    DPFedAvg,
    FedAvg,
    FedOpt,
    ServerOptimizer,
    coordinate_median,
    fedavg,
    from_config,
    make_strategy,
    trimmed_mean,
)


def up(values, n=1):
    return ClientUpdate({"w": torch.tensor(values, dtype=torch.float32)}, n)


def round_of(*updates):
    """What a strategy gets from updates in the clear: the sum of their payloads, and each one."""
    payloads = [
        payload.encode_weighted(np.array(u.delta["w"].tolist()), num_samples=u.num_samples, loss=1.0) for u in updates
    ]
    return payload.decode(sum(payloads)), [payload.decode(p) for p in payloads]


def aggregate(name, updates, **kw):
    total, each = round_of(*updates)
    return make_strategy(name, **kw).aggregate(total, each, sampled=len(updates), rng=np.random.default_rng(0))


def test_fedavg_weights_by_samples():
    out = fedavg([up([1.0, 0.0], 1), up([3.0, 4.0], 3)])

    assert out["w"].tolist() == pytest.approx([(1 * 1 + 3 * 3) / 4, (0 + 4 * 3) / 4])


def test_median_and_trimmed_mean_by_hand():
    ups = [up([1.0]), up([2.0]), up([3.0]), up([4.0]), up([100.0])]

    assert coordinate_median(ups)["w"].item() == 3.0
    assert trimmed_mean(ups, trim=0.2)["w"].item() == pytest.approx((2 + 3 + 4) / 3)  # drops 1 and 100


@pytest.mark.parametrize("rule", ["fedmedian", "trimmed_mean"])
def test_robust_rules_survive_one_client_sending_a_1e6_scaled_update(rule):
    honest = [up([0.10, -0.20]), up([0.12, -0.18]), up([0.08, -0.22]), up([0.11, -0.19])]
    attacked = honest + [up([0.10e6, -0.20e6])]

    out = aggregate(rule, attacked)

    assert np.abs(out).max() < 0.5  # FedAvg would give ~2e4
    assert np.abs(aggregate("fedavg", attacked)).max() > 1e3


def test_fedadam_first_step_by_hand():
    opt = ServerOptimizer("adam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)

    out = opt.apply(fedavg([up([0.5])]))["w"].item()

    m = 0.1 * 0.5
    v = 0.99 * 1e-6 + 0.01 * 0.25
    assert out == pytest.approx(0.1 * m / (v**0.5 + 1e-3), rel=1e-5)


def test_fedyogi_moves_v_additively_towards_the_squared_delta():
    opt = ServerOptimizer("yogi", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)

    opt.apply(fedavg([up([0.5])]))

    v0 = 1e-6
    assert opt.v["w"].item() == pytest.approx(v0 + 0.01 * 0.25, rel=1e-5)  # v < d²: it grows by (1-β2)·d²


def test_mismatched_or_empty_updates_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="no client updates"):
        fedavg([])
    with pytest.raises(ValueError, match="different tensors"):
        fedavg([up([1.0]), ClientUpdate({"x": torch.tensor([1.0])}, 1)])
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("krum2")


def test_flatten_and_unflatten_round_trip_in_the_order_given():
    from edgefleet.federation.strategies import flatten, unflatten

    delta = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor([7.0])}

    vec = flatten(delta, ["a", "b"])

    assert vec.tolist() == [7.0, 0, 1, 2, 3, 4, 5]
    back = unflatten(vec, delta, ["a", "b"])
    assert all(torch.equal(back[k], delta[k]) for k in delta)
    with pytest.raises(ValueError, match="does not fit"):
        unflatten(vec[:-1], delta, ["a", "b"])


def test_fedavg_from_the_secure_sums_equals_fedavg_of_the_updates():
    import numpy as np

    from edgefleet.federation.strategies import fedavg_from_sum, flatten

    ups = [up([1.0, 0.0], 1), up([3.0, 4.0], 3)]
    weighted = sum(flatten(u.delta, ["w"]) * u.num_samples for u in ups)

    np.testing.assert_allclose(fedavg_from_sum(weighted, 4), fedavg(ups)["w"].numpy())


def test_user_level_clipping_bounds_the_norm_and_the_noise_has_std_sigma_c_over_k():
    import numpy as np

    from edgefleet.federation.strategies import clip_to_norm, dp_fedavg_from_sum

    clipped, norm = clip_to_norm(np.array([3.0, 4.0]), 1.0)
    assert norm == 5.0 and np.linalg.norm(clipped) == pytest.approx(1.0)
    assert clip_to_norm(np.array([0.3, 0.4]), 1.0)[0].tolist() == [0.3, 0.4]  # short vectors stay

    out = dp_fedavg_from_sum(np.zeros(200_000), 4, clip=0.5, noise_multiplier=2.0, rng=np.random.default_rng(0))

    assert out.std() == pytest.approx(2.0 * 0.5 / 4, rel=0.01) and abs(out.mean()) < 1e-2


def test_every_strategy_on_a_round_in_the_clear_matches_its_rule_on_the_updates():
    ups = [up([1.0, 0.0], 1), up([3.0, 4.0], 3), up([2.0, -8.0], 2)]

    np.testing.assert_allclose(aggregate("fedavg", ups), fedavg(ups)["w"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(aggregate("fedprox", ups), fedavg(ups)["w"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(aggregate("fedmedian", ups), coordinate_median(ups)["w"].numpy())
    np.testing.assert_allclose(aggregate("trimmed_mean", ups, trim=0.34), trimmed_mean(ups, 0.34)["w"].numpy())


def test_the_robust_rules_refuse_a_secure_aggregated_sum():
    total, _ = round_of(up([1.0]), up([2.0]))

    with pytest.raises(ValueError, match="in the clear"):
        make_strategy("fedmedian").aggregate(total, None, sampled=2, rng=None)
    assert make_strategy("fedmedian").needs_each_update and not make_strategy("fedavg").needs_each_update


def test_each_strategy_declares_in_one_table_whether_it_needs_each_update_and_the_config_reads_that_table():
    from typing import get_args

    from edgefleet.config import STRATEGY_NEEDS_EACH_UPDATE, StrategyName
    from edgefleet.federation.strategies import STRATEGIES

    assert set(STRATEGIES) == set(STRATEGY_NEEDS_EACH_UPDATE) == set(get_args(StrategyName))
    for name in STRATEGIES:
        assert make_strategy(name).needs_each_update is STRATEGY_NEEDS_EACH_UPDATE[name], name
        if not STRATEGY_NEEDS_EACH_UPDATE[name]:  # DP-FedAvg noises the sum: it needs no update apart
            assert not make_strategy(name, user_dp=(1.0, 1.0)).needs_each_update, name


def test_fedadam_keeps_its_server_state_across_rounds_through_the_state_it_returns():
    strategy = make_strategy("fedadam", server_lr=0.1)
    opt = ServerOptimizer("adam", lr=0.1)
    state = None
    for delta in ([0.5], [-0.2], [0.3]):  # the same steps, once through a state handed back each round
        out, state = strategy.server_step({"w": torch.tensor(delta)}, state)
        expected = opt.apply({"w": torch.tensor(delta)})

    assert isinstance(strategy, FedOpt) and strategy.stateful
    assert torch.allclose(out["w"], expected["w"])
    assert FedAvg().server_step({"w": torch.tensor([0.5])}, None)[1] is None


def test_user_level_dp_wraps_the_named_strategy_reports_no_loss_and_adds_sigma_c_noise_over_k():
    from edgefleet.config import FederationConfig

    fed = FederationConfig(strategy="fedyogi", user_dp={"clip_norm": 0.5, "noise_multiplier": 2.0})
    clipped = [payload.encode_clipped(np.zeros(100_000), clip=0.5) for _ in range(3)]

    strategy = from_config(fed)
    out = strategy.aggregate(payload.decode(sum(clipped)), None, sampled=4, rng=np.random.default_rng(0))

    assert isinstance(strategy, DPFedAvg) and strategy.stateful and not strategy.reports_loss
    assert out.std() == pytest.approx(2.0 * 0.5 / 4, rel=0.02)  # divided by the number sampled, not finished
    assert from_config(FederationConfig()).reports_loss
