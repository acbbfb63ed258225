"""Aggregation rules against hand computations, and robustness to one 1e6-scaled client."""

import pytest
import torch

from edgefleet.federation.strategies import (
    ClientUpdate,
    ServerOptimizer,
    aggregate,
    coordinate_median,
    fedavg,
    lora_a_moved,
    trimmed_mean,
)


def up(values, n=1):
    return ClientUpdate({"w": torch.tensor(values, dtype=torch.float32)}, n)


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

    out = aggregate(rule, attacked)["w"]

    assert out.abs().max().item() < 0.5  # FedAvg would give ~2e4
    assert aggregate("fedavg", attacked)["w"].abs().max().item() > 1e3


def test_fedadam_first_step_by_hand():
    opt = ServerOptimizer("adam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)

    out = opt.step([up([0.5])])["w"].item()

    m = 0.1 * 0.5
    v = 0.99 * 1e-6 + 0.01 * 0.25
    assert out == pytest.approx(0.1 * m / (v**0.5 + 1e-3), rel=1e-5)


def test_fedyogi_moves_v_additively_towards_the_squared_delta():
    opt = ServerOptimizer("yogi", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)

    opt.step([up([0.5])])

    v0 = 1e-6
    assert opt.v["w"].item() == pytest.approx(v0 + 0.01 * 0.25, rel=1e-5)  # v < d²: it grows by (1-β2)·d²


def test_mismatched_or_empty_updates_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="no client updates"):
        fedavg([])
    with pytest.raises(ValueError, match="different tensors"):
        fedavg([up([1.0]), ClientUpdate({"x": torch.tensor([1.0])}, 1)])
    with pytest.raises(ValueError, match="unknown strategy"):
        aggregate("krum2", [up([1.0])])


def test_lora_a_moved_names_the_tensors_that_break_exact_averaging():
    delta = {"layer.lora_A.weight": torch.zeros(2, 2), "layer.lora_B.weight": torch.ones(2, 2)}
    assert lora_a_moved(delta) == []
    delta["layer.lora_A.weight"][0, 0] = 1e-3
    assert lora_a_moved(delta) == ["layer.lora_A.weight"]


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


def test_server_optimizer_from_a_mean_equals_from_the_updates():
    a, b = ServerOptimizer("adam", lr=0.1), ServerOptimizer("adam", lr=0.1)
    ups = [up([0.5, -1.0], 2), up([1.5, 1.0], 2)]

    for _ in range(3):
        stepped, applied = a.step(ups), b.apply(fedavg(ups))

    assert torch.allclose(stepped["w"], applied["w"])
