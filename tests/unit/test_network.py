"""The simulated WAN samples delays and losses from the configured profiles, seeded."""

import random
import statistics

from edgefleet.config import NetworkProfile
from edgefleet.platform.network import SimulatedWan


def test_delay_follows_the_profile_and_is_never_negative():
    profiles = {"edge-1": NetworkProfile(rtt_ms=20, jitter_ms=5), "near": NetworkProfile(rtt_ms=1, jitter_ms=10)}
    wan = SimulatedWan(profiles, rng=random.Random(1))

    delays = [wan.sample_delay_s("edge-1") * 1000 for _ in range(2000)]
    near = [wan.sample_delay_s("near") for _ in range(2000)]

    assert abs(statistics.mean(delays) - 20) < 0.5 and abs(statistics.stdev(delays) - 5) < 0.5
    assert min(near) == 0.0  # jitter larger than the RTT is clipped, not negative
    assert wan.rtt_ms("edge-1") == 20


def test_loss_rate_is_respected_and_seeded():
    profiles = {"lossy": NetworkProfile(loss=0.25), "clean": NetworkProfile()}
    a = SimulatedWan(profiles, rng=random.Random(7))
    b = SimulatedWan(profiles, rng=random.Random(7))

    drops = [a.drops("lossy") for _ in range(4000)]

    assert abs(sum(drops) / len(drops) - 0.25) < 0.03
    assert drops[:50] == [b.drops("lossy") for _ in range(50)]
    assert not any(a.drops("clean") for _ in range(100))


def test_disabled_injects_nothing():
    wan = SimulatedWan({"edge-1": NetworkProfile(rtt_ms=50, loss=0.9)}, enabled=False)

    assert wan.sample_delay_s("edge-1") == 0.0 and not wan.drops("edge-1") and wan.rtt_ms("edge-1") == 0.0
