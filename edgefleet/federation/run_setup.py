"""What a federated run is made of besides its rounds: the clients' local hyper-parameters, the
held-out evaluator in the coordinator's process, and the client sessions on the edge nodes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgefleet.config import EdgefleetConfig
from edgefleet.errors import EdgefleetError


@dataclass
class Evaluator:
    """The base model and the held-out blocks, in the coordinator's process: scores global adapters."""

    base: Any
    blocks: Any
    hp: Any
    judge: Any = None  # eval/scores.QualityJudge when the sites have held-out questions, else None

    def quality(self, adapter: dict[str, Any]) -> Any:
        """The adapter's :class:`~edgefleet.eval.scores.Quality` (None without held-out questions)."""
        if self.judge is None:
            return None
        import torch

        from edgefleet.train.dp import load_adapter, lora_model

        with torch.random.fork_rng():
            torch.manual_seed(self.hp.seed)
            model = lora_model(self.base, self.hp)
        load_adapter(model, adapter)
        return self.judge.score(model)

    def initial_adapter(self) -> dict[str, Any]:
        import torch

        from edgefleet.train.dp import adapter_state, lora_model

        with torch.random.fork_rng():  # the same init every client builds from the same seed
            torch.manual_seed(self.hp.seed)
            return adapter_state(lora_model(self.base, self.hp))

    def loss(self, adapter: dict[str, Any]) -> float:
        from edgefleet.train.dp import held_out_loss

        return held_out_loss(self.base, adapter, self.blocks, self.hp)


def load_evaluator(cfg: EdgefleetConfig, hp: Any) -> Evaluator:
    from edgefleet.eval.scores import QualityJudge, served_form
    from edgefleet.eval.sites import held_out_by_site
    from edgefleet.platform.models import load_trainable
    from edgefleet.train.data import chunk_for_causal_lm, held_out_dir, read_texts

    sources = {n.model.source for n in cfg.fleet.edge_nodes}
    if len(sources) != 1:
        raise EdgefleetError(f"federation needs one base model on every edge node, found {sorted(sources)}")
    base, tok = load_trainable(cfg.fleet.edge_nodes[0].model, cfg.cache_dir)
    fed = cfg.federation
    blocks = chunk_for_causal_lm(read_texts(held_out_dir(cfg)), tok, fed.block_size)[: fed.held_out_blocks]
    questions = held_out_by_site(cfg)  # public evaluation sets only, no user data
    served = served_form(cfg.fleet.edge_nodes[0].model.quantization)
    judge = QualityJudge(base, tok, questions, fed.block_size, served) if any(questions.values()) else None
    return Evaluator(base, blocks, hp, judge)


def local_hyper(cfg: EdgefleetConfig) -> Any:
    from edgefleet.train.dp import LocalHyper

    fed = cfg.federation
    return LocalHyper(
        lr=fed.lr,
        batch_size=fed.batch_size,
        physical_batch=min(8, fed.batch_size),
        max_steps=fed.local_steps,
        epochs=1000.0,
        seed=fed.seed,
        prox_mu=fed.prox_mu if fed.strategy == "fedprox" else 0.0,
    )


def ray_sessions(cfg: EdgefleetConfig, cpus_per_client: float = 0.25) -> Callable[[str], Any]:
    """Client factory: a long-lived Ray Train session on the client's own node, serving its steps."""

    def start(node_id: str) -> Any:
        from edgefleet.federation.participant import handle
        from edgefleet.train.jobs import LocalTrainingSession

        return LocalTrainingSession(
            cfg,
            node_id,
            block_size=cfg.federation.block_size,
            cpus_per_worker=cpus_per_client,
            threads=1,
            handler=handle,
        )

    return start
