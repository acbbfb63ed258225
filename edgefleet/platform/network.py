"""The simulated WAN between the Gateway and each node, for fleets that live on one machine.

On one machine every hop is loopback, so the configured network profile (RTT, jitter, loss per
node) is injected at the Gateway's outbound hop instead: the Gateway sleeps one sampled round
trip before dispatching, and drops a call at the configured loss rate (the router then fails
over as it would for a real loss). Responses say ``network_simulated``. On a real cluster
nothing is injected. Sampling is pure and seeded; the Gateway does the sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from edgefleet.config import NetworkProfile
from edgefleet.errors import EdgefleetError


class SimulatedLoss(EdgefleetError):
    """The simulated network dropped this call."""


@dataclass
class SimulatedWan:
    profiles: Mapping[str, NetworkProfile]  # by node id
    enabled: bool = True
    rng: random.Random = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.rng = self.rng or random.Random(0)

    def rtt_ms(self, node_id: str) -> float:
        """The configured mean RTT: what the router should expect (0 when not simulated)."""
        profile = self.profiles.get(node_id)
        return profile.rtt_ms if self.enabled and profile else 0.0

    def sample_delay_s(self, node_id: str) -> float:
        """One round trip, s: RTT plus Gaussian jitter, never negative; 0 when not simulated."""
        profile = self.profiles.get(node_id)
        if not self.enabled or profile is None:
            return 0.0
        return max(0.0, self.rng.gauss(profile.rtt_ms, profile.jitter_ms)) / 1000

    def drops(self, node_id: str) -> bool:
        profile = self.profiles.get(node_id)
        return bool(self.enabled and profile and profile.loss > 0 and self.rng.random() < profile.loss)
