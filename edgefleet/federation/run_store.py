"""A federated run's durable state: one directory, written so that a kill at any instant loses nothing.

    <run_dir>/state.json              the run (round_state.py): completed rounds, the round in progress, its step
    <run_dir>/ledger.sqlite           the privacy ledger (federation/ledger.py)
    <run_dir>/global/round-<r>.safetensors   the global adapter after round r (round 0: the start)
    <run_dir>/rounds/<r>/vectors.npz  the round's masked vectors, until the round commits
    <run_dir>/server_opt/round-<r>.pt FedAdam/FedYogi state after round r
    <run_dir>/rounds.jsonl            one line per completed round (what the registry receives)

``state.json`` is replaced atomically (write, fsync, rename), so a reader sees the old or the new
state, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgefleet.federation.round_state import RunState


class RunStore:
    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"

    def load(self) -> RunState | None:
        return RunState.from_json(json.loads(self.state_path.read_text())) if self.state_path.is_file() else None

    def save(self, state: RunState) -> None:
        _atomic_write(self.state_path, json.dumps(state.to_json(), indent=1, sort_keys=True).encode())

    def adapter_path(self, round_id: int) -> Path:
        return self.dir / "global" / f"round-{round_id}.safetensors"

    def save_adapter(self, round_id: int, adapter: dict[str, Any]) -> Path:
        from safetensors.torch import save

        path = self.adapter_path(round_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, save({k: v.contiguous() for k, v in adapter.items()}))
        return path

    def load_adapter(self, round_id: int) -> dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.adapter_path(round_id)))

    def round_dir(self, round_id: int) -> Path:
        path = self.dir / "rounds" / str(round_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save_vectors(self, round_id: int, vectors: dict[str, Any]) -> None:
        import io

        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, **vectors)
        _atomic_write(self.round_dir(round_id) / "vectors.npz", buf.getvalue())

    def load_vectors(self, round_id: int) -> dict[str, Any]:
        import numpy as np

        with np.load(self.round_dir(round_id) / "vectors.npz") as data:
            return {k: data[k] for k in data.files}

    def save_server_state(self, round_id: int, state: dict[str, Any]) -> None:
        import io

        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.dir / "server_opt" / f"round-{round_id}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, buf.getvalue())

    def load_server_state(self, round_id: int) -> dict[str, Any]:
        """The server optimiser's state after ``round_id`` (empty before the first round)."""
        import torch

        path = self.dir / "server_opt" / f"round-{round_id}.pt"
        return torch.load(path, weights_only=False) if path.is_file() else {"m": {}, "v": {}}

    def drop_round_secrets(self, round_id: int) -> None:
        """Delete the masked vectors: with the revealed shares they would rebuild the noise-free sum."""
        (self.round_dir(round_id) / "vectors.npz").unlink(missing_ok=True)

    def rounds(self) -> list[dict[str, Any]]:
        path = self.dir / "rounds.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def append_round(self, row: dict[str, Any]) -> None:
        """Append a committed round's row, unless that round is already there."""
        if any(r["round"] == row["round"] for r in self.rounds()):
            return
        with open(self.dir / "rounds.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
