"""Publication: each committed round into the MLflow registry, built from the config.

The coordinator hands every committed round to a :class:`RoundPublisher` (its ``publisher``), with
the base model and hyper-parameters the round's adapter applies to. The publisher exports the
adapter as a PEFT folder and registers it with its lineage (:class:`~edgefleet.mlflow.registry.RoundRecord`):
exactly once per round, since the registry recognises a round it already holds and the outbox keeps
a round MLflow could not take yet. Publication never aborts a federation run: whatever fails, the
round is kept (or was never taken: the coordinator's run state still has it) and the error logged.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgefleet.config import EdgefleetConfig
from edgefleet.federation.round_state import RoundResult
from edgefleet.mlflow.registry import ModelRegistry, RoundRecord

log = logging.getLogger(__name__)


class RoundPublisher:
    """Registers committed rounds of run ``run`` in ``registry``; ``lineage`` is what every version is tagged with."""

    def __init__(
        self, registry: ModelRegistry, *, run: str, lineage: dict[str, Any], base_model: dict[str, Any]
    ) -> None:
        self.registry, self.run, self.lineage, self.base_model = registry, run, lineage, base_model

    @classmethod
    def from_config(cls, cfg: EdgefleetConfig, *, run: str) -> RoundPublisher:
        """The registry ``cfg.mlflow`` names, and the run's settings as every version's lineage."""
        fed, priv = cfg.federation, cfg.privacy
        base_model = cfg.fleet.edge_nodes[0].model.model_dump(mode="json", include={"source"})
        lineage = {
            "strategy": fed.strategy,
            "clients_per_round": fed.clients_per_round,
            "nodes": len(cfg.fleet.edge_nodes),
            "secure_aggregation": fed.secure_aggregation,
            "target_epsilon_per_round": priv.target_epsilon,
            "noise_multiplier": priv.noise_multiplier,
            "delta": priv.delta,
            "max_grad_norm": priv.max_grad_norm,
            "client_budget_epsilon": priv.client_budget_epsilon,
            "accountant": priv.accountant,
            "user_dp": fed.user_dp.model_dump() if fed.user_dp else None,
            "local_steps": fed.local_steps,
            "batch_size": fed.batch_size,
            "lr": fed.lr,
            "base_model": base_model["source"],
        }
        return cls(ModelRegistry.from_config(cfg), run=run, lineage=lineage, base_model=base_model)

    def publish(self, result: RoundResult, adapter_path: Path, *, base: Any, hp: Any, base_quality: Any) -> str | None:
        """Register round ``result``'s adapter (``adapter_path``, over ``base``); its version, or None
        if it could not be published now (the round waits in the outbox and goes with the next
        publish). Never raises: a registry problem must not abort the federated run."""
        try:
            return self._publish(result, adapter_path, base=base, hp=hp, base_quality=base_quality)
        except Exception:  # noqa: BLE001 - publication is best effort here; the outbox retries
            log.exception("publishing round %d of %s failed; the run goes on", result.round, self.run)
            return None

    def _publish(self, result: RoundResult, adapter_path: Path, *, base: Any, hp: Any, base_quality: Any) -> str | None:
        from safetensors.torch import load_file

        from edgefleet import metrics
        from edgefleet.train.dp import export_adapter

        record = RoundRecord(
            run=self.run,
            round=result.round,
            strategy=self.lineage["strategy"],
            clients=list(result.finished),
            train_loss=result.train_loss,
            held_out_loss=result.held_out_loss,
            perplexity=result.perplexity,
            epsilon=dict(result.epsilon),
            delta=self.lineage["delta"],
            budget_epsilon=self.lineage["client_budget_epsilon"],
            user_epsilon=result.user_epsilon,
            base_model=self.base_model,
            params=self.lineage,
            scores=asdict(result.quality) if result.quality is not None else None,
            base_task_score=base_quality.task_score if base_quality is not None else None,
        )
        with tempfile.TemporaryDirectory() as tmp:
            peft_dir = export_adapter(base, load_file(str(adapter_path)), hp, Path(tmp) / "peft")
            version = self.registry.publish(record, peft_dir)
        if version is not None:
            metrics.champion_of(self.registry)
        return version

    def held(self, version: str) -> bool:
        """Whether the gate held ``version``; False when the registry cannot say (then the run
        builds on it, as it did before the gate existed)."""
        try:
            return self.registry.show(version)["tags"].get("edgefleet.gate") == "held"
        except Exception:  # noqa: BLE001 - the registry unreachable: do not stall the run on it
            log.warning("could not read the gate's decision on v%s; building on it", version)
            return False

    def gate(self, version: str) -> str:
        """What the promotion gate said of ``version`` ("champion: …", "candidate: …"), for display."""
        tags = self.registry.show(version).get("tags", {})
        return f"{tags.get('edgefleet.gate', '?')}: {tags.get('edgefleet.gate_reason', '')}"
