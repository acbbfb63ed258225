"""The privacy ledger: every client's composed (ε, δ), durable, and a budget nobody exceeds. No Ray.

Per client it stores each round's DP-SGD release, (noise multiplier, sample rate, steps), and
composes the whole history with Opacus' accountant (RDP or PRV, :mod:`edgefleet.train.accounting`),
never by adding per-round ε's.
A client whose next round would take its composed ε past its budget is not eligible. Rows are
keyed by (client, round, attempt), so a coordinator that restarts and records a release again counts
it once, while a round that had to be retried after its first attempt's updates were seen counts both.
The store is SQLite in the run directory.

Example:
    >>> ledger = PrivacyLedger(":memory:", budget_epsilon=10.0, delta=1e-5)
    >>> release = Release(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    >>> ledger.can_take_part("edge-1", release)
    True
    >>> ledger.record("edge-1", 1, release); ledger.record("edge-1", 1, release)  # counted once
    >>> 0 < ledger.epsilon("edge-1") < 10
    True
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgefleet.train.accounting import Release, composed_epsilon

SCHEMA = """CREATE TABLE IF NOT EXISTS releases (
    client TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL DEFAULT 1,
    noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, steps INTEGER NOT NULL,
    PRIMARY KEY (client, round, attempt))"""


class PrivacyLedger:
    def __init__(self, path: str | Path, *, budget_epsilon: float, delta: float, accountant: str = "rdp") -> None:
        if budget_epsilon <= 0 or not 0 < delta < 1:
            raise ValueError("budget_epsilon must be > 0 and delta in (0, 1)")
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)  # autocommit: every record is durable
        self.db.execute(SCHEMA)
        self.budget, self.delta, self.accountant = budget_epsilon, delta, accountant

    def releases(self, client: str) -> list[Release]:
        rows = self.db.execute(
            "SELECT noise_multiplier, sample_rate, steps FROM releases WHERE client = ? ORDER BY round, attempt",
            (client,),
        ).fetchall()
        return [Release(*row) for row in rows]

    def epsilon(self, client: str) -> float:
        return composed_epsilon(self.releases(client), self.delta, self.accountant)

    def epsilon_if(self, client: str, release: Release) -> float:
        return composed_epsilon([*self.releases(client), release], self.delta, self.accountant)

    def can_take_part(self, client: str, release: Release) -> bool:
        """Whether ``client`` stays within its budget after one more ``release``."""
        return self.epsilon_if(client, release) <= self.budget

    def recorded(self, client: str, round_id: int, attempt: int = 1) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM releases WHERE client = ? AND round = ? AND attempt = ?", (client, round_id, attempt)
            ).fetchone()
            is not None
        )

    def record(self, client: str, round_id: int, release: Release, attempt: int = 1, *, force: bool = False) -> None:
        """Record a release; recording the same (client, round, attempt) again changes nothing.

        ``force`` records a release that already happened even past the budget: the ledger must
        never under-count. Without it such a release is refused.

        Raises:
            ValueError: the release would take the client past its budget (it should not have run).
        """
        if self.recorded(client, round_id, attempt):
            return
        if not force and not self.can_take_part(client, release):
            raise ValueError(f"{client}: round {round_id} would exceed the privacy budget ε={self.budget}")
        self.db.execute(
            "INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?)",
            (client, round_id, attempt, release.noise_multiplier, release.sample_rate, release.steps),
        )

    def close(self) -> None:
        self.db.close()
