"""Ray Train jobs: a private local update runs *on the client's own edge node*, next to its data.

:func:`run_local_update` starts a ``TorchTrainer`` whose workers are pinned to the node through
``ScalingConfig(label_selector=...)``. The worker reads the node's data directory, runs
:func:`edgefleet.train.dp.local_update` and reports the adapter delta, the metrics and the
privacy accountant's state in a checkpoint (Train V2 leaves ``Result.metrics`` empty without
one). Only that checkpoint leaves the node: never the text.

With ``workers=2`` the two workers on the node train together through Opacus ``DPDDP``: Opacus
all-reduces the clipped, noised gradients itself, so the model is not wrapped by Train's
``prepare_model`` (a second all-reduce) and the data loader gets no ``DistributedSampler``
(Opacus' distributed Poisson sampler splits the data).

A restarted job resumes from its latest checkpoint's accountant state, so ε is never under-counted.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgefleet.config import EdgefleetConfig, PrivacyConfig
from edgefleet.train.dp import DEFAULT_HYPER, LocalHyper, LocalUpdate

UPDATE_FILE = "update.pt"


@dataclass(frozen=True)
class JobResult:
    update: LocalUpdate
    wall_s: float  # fit() from the caller's side: scheduling, worker start, model load, training
    train_s: float  # inside local_update only
    node_id: str
    workers: int
    ran_on: str  # the Ray node id the workers ran on
    ranks_in_sync: bool  # with several workers: every rank ended with the same adapter


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on each Train worker, on the client's node."""
    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint

    from edgefleet.config import ModelSpec
    from edgefleet.platform.models import load_trainable
    from edgefleet.train.data import chunk_for_causal_lm, read_texts
    from edgefleet.train.dp import local_update

    torch.set_num_threads(config["threads"])
    spec = ModelSpec.model_validate(config["model"])
    base, tok = load_trainable(spec, Path(config["cache_dir"]))
    blocks = chunk_for_causal_lm(read_texts(Path(config["data_dir"])), tok, config["block_size"])
    accountant_state = config["accountant_state"]
    resumed = ray.train.get_checkpoint()
    if resumed is not None:  # a restarted job: what was already spent still counts
        with resumed.as_directory() as d:
            accountant_state = torch.load(Path(d) / UPDATE_FILE, weights_only=False)["update"]["accountant_state"]
    privacy = PrivacyConfig.model_validate(config["privacy"]) if config["privacy"] else None
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    update = local_update(base, config["adapter"], blocks, privacy, LocalHyper(**config["hp"]),
                          accountant_state=accountant_state, distributed=distributed)  # fmt: skip
    metrics = {"loss": update.loss, "epsilon": update.epsilon, "epsilon_total": update.epsilon_total,
               "steps": update.steps, "samples_per_s": update.samples_per_s, "train_s": update.seconds}  # fmt: skip
    in_sync = True
    if distributed:  # DPDDP must leave every rank with the same weights
        mine = torch.stack([v.double().sum() for v in update.adapter.values()])
        ranks = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(ranks, mine)
        in_sync = all(torch.allclose(r, ranks[0]) for r in ranks)
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            torch.save({"update": asdict(update), "ran_on": ray.get_runtime_context().get_node_id(),
                        "ranks_in_sync": in_sync}, Path(d) / UPDATE_FILE)  # fmt: skip
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d) if rank == 0 else None)


def run_local_update(cfg: EdgefleetConfig, node_id: str, *, adapter: dict[str, Any] | None = None,
                     hp: LocalHyper = DEFAULT_HYPER, private: bool = True, workers: int = 1,
                     accountant_state: dict[str, Any] | None = None, block_size: int = 128,
                     cpus_per_worker: float = 0.5, threads: int = 1) -> JobResult:  # fmt: skip
    """One private local update on ``node_id``'s own data, as a Ray Train job on that node.

    Raises:
        ValueError: ``node_id`` is not an edge node of ``cfg``.
        FileNotFoundError: the node's data directory holds no text (``edgefleet train data`` writes it).
    """
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from edgefleet.platform.topology import node_selector
    from edgefleet.train.data import node_data_dir

    node = next((n for n in cfg.fleet.edge_nodes if n.id == node_id), None)
    if node is None:
        raise ValueError(f"unknown edge node {node_id!r}; known: {', '.join(n.id for n in cfg.fleet.edge_nodes)}")
    data_dir = node_data_dir(cfg, node)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: node {node_id} has no training data (run `edgefleet train data`)")
    config = {"model": node.model.model_dump(mode="json"), "cache_dir": str(cfg.cache_dir),
              "data_dir": str(data_dir), "block_size": block_size, "adapter": adapter, "hp": asdict(hp),
              "privacy": cfg.privacy.model_dump(mode="json") if private else None,
              "accountant_state": accountant_state, "threads": threads}  # fmt: skip
    trainer = TorchTrainer(
        _train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": cpus_per_worker},
                                     label_selector=node_selector(node_id)),
        run_config=RunConfig(name=f"local-{node_id}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}",
                             storage_path=str(cfg.cache_dir / "train")),
    )  # fmt: skip
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"the local update on {node_id} reported no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / UPDATE_FILE, weights_only=False)
    update = LocalUpdate(**saved["update"])
    return JobResult(update, wall, update.seconds, node_id, workers, saved["ran_on"], saved["ranks_in_sync"])
