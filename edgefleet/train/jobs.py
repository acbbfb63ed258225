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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.config import EdgefleetConfig, PrivacyConfig
from edgefleet.errors import EdgefleetError
from edgefleet.train.dp import DEFAULT_HYPER, LocalHyper, LocalUpdate
from edgefleet.train.mailbox import Mailbox, SessionReply, SessionStopped, SessionTask

UPDATE_FILE = "update.pt"


@dataclass(frozen=True)
class SessionContext:
    """What a session's handler gets besides the model and the data: where it runs, and its memory."""

    node_id: str
    privacy: PrivacyConfig | None
    memory: dict[str, Any] = field(default_factory=dict)  # kept between a session's tasks (a round's secrets)
    rank: int = 0


class StepFailed(EdgefleetError, RuntimeError):
    """The session's handler raised on the node; the message is its error, the session goes on."""


@dataclass(frozen=True)
class JobResult:
    update: LocalUpdate
    wall_s: float  # fit() from the caller's side: scheduling, worker start, model load, training
    train_s: float  # inside local_update only
    node_id: str
    workers: int
    ran_on: str  # the Ray node id the workers ran on
    ranks_in_sync: bool  # with several workers: every rank ended with the same adapter
    worker_pid: int  # rank 0's process
    world_size: int  # the process group the update was trained in (DPDDP: the workers)


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on each Train worker, on the client's node: one update, or, with a ``mailbox`` in the
    config, a session that answers its owner's messages round after round (the model and the data
    are loaded once)."""
    import ray.train
    import torch
    import torch.distributed as dist

    from edgefleet.config import ModelSpec
    from edgefleet.platform.models import load_trainable
    from edgefleet.train.data import training_samples

    torch.set_num_threads(config["threads"])
    spec = ModelSpec.model_validate(config["model"])
    base, tok = load_trainable(spec, Path(config["cache_dir"]))

    def load_samples() -> Any:
        return training_samples(Path(config["data_dir"]), tok, config["block_size"])

    blocks = load_samples()
    accountant_state = config["accountant_state"]
    resumed = ray.train.get_checkpoint()
    if resumed is not None:  # a restarted job: what was already spent still counts
        with resumed.as_directory() as d:
            accountant_state = torch.load(Path(d) / UPDATE_FILE, weights_only=False)["update"]["accountant_state"]
    privacy = PrivacyConfig.model_validate(config["privacy"]) if config["privacy"] else None
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank = ray.train.get_context().get_world_rank()
    mailbox = config.get("mailbox")
    if mailbox is None:  # a one-off job: one update, reported with its checkpoint
        task = {"adapter": config["adapter"], "hp": config["hp"]}
        _one_round(base, blocks, task, privacy, accountant_state, distributed, rank)
        return
    # A session (one worker): answer its owner's messages until told to stop.
    handler = config["handler"]
    context = SessionContext(config["node_id"], privacy, rank=rank)
    while (task := mailbox.next_task()) is not None:
        if getattr(task.message, "reload_data", False):  # a new round: what users said since the last one counts
            try:
                blocks = load_samples()
            except Exception:  # noqa: BLE001 - unreadable now: train on what was there
                pass
        try:
            answer = SessionReply(task.seq, reply=handler(base, blocks, task.message, context))
        except Exception as exc:  # noqa: BLE001 - one failed step must not end the session
            answer = SessionReply(task.seq, error=f"{type(exc).__name__}: {exc}")
        mailbox.put_answer(answer)


def _one_round(
    base: Any,
    blocks: Any,
    task: dict[str, Any],
    privacy: PrivacyConfig | None,
    accountant_state: dict[str, Any] | None,
    distributed: bool,
    rank: int,
) -> dict[str, Any]:
    """One update, reported with its checkpoint; returns what was saved (on every rank)."""
    import os

    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train import Checkpoint

    from edgefleet.train.dp import local_update

    update = local_update(
        base,
        task["adapter"],
        blocks,
        privacy,
        LocalHyper(**task["hp"]),
        accountant_state=accountant_state,
        distributed=distributed,
    )
    metrics = {
        "loss": update.loss,
        "epsilon": update.epsilon,
        "epsilon_total": update.epsilon_total,
        "steps": update.steps,
        "samples_per_s": update.samples_per_s,
        "train_s": update.seconds,
    }
    in_sync, world_size = True, dist.get_world_size() if distributed else 1
    if distributed:  # DPDDP must leave every rank with the same weights
        mine = torch.stack([v.double().sum() for v in update.adapter.values()])
        ranks = [torch.zeros_like(mine) for _ in range(world_size)]
        dist.all_gather(ranks, mine)
        in_sync = all(torch.allclose(r, ranks[0]) for r in ranks)
    saved = {
        "update": asdict(update),
        "ran_on": ray.get_runtime_context().get_node_id(),
        "ranks_in_sync": in_sync,
        "worker_pid": os.getpid(),
        "world_size": world_size,
    }
    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            torch.save(saved, Path(d) / UPDATE_FILE)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d) if rank == 0 else None)
    return saved


def _trainer(
    cfg: EdgefleetConfig,
    node_id: str,
    extra: dict[str, Any],
    *,
    adapter: dict[str, Any] | None,
    hp: LocalHyper,
    private: bool,
    workers: int,
    accountant_state: dict[str, Any] | None,
    block_size: int,
    cpus_per_worker: float,
    threads: int,
) -> Any:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from edgefleet.platform.topology import node_selector
    from edgefleet.train.data import node_data_dir

    node = next((n for n in cfg.fleet.edge_nodes if n.id == node_id), None)
    if node is None:
        raise ValueError(f"unknown edge node {node_id!r}; known: {', '.join(n.id for n in cfg.fleet.edge_nodes)}")
    _require_alive(node_id)
    data_dir = node_data_dir(cfg, node)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: node {node_id} has no training data (run `edgefleet train data`)")
    config = {
        "model": node.model.model_dump(mode="json"),
        "cache_dir": str(cfg.cache_dir),
        "data_dir": str(data_dir),
        "block_size": block_size,
        "adapter": adapter,
        "hp": asdict(hp),
        "privacy": cfg.privacy.model_dump(mode="json") if private else None,
        "accountant_state": accountant_state,
        "threads": threads,
        "node_id": node_id,
        **extra,
    }
    return TorchTrainer(
        _train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=False,
            resources_per_worker={"CPU": cpus_per_worker},
            label_selector=node_selector(node_id),
        ),
        run_config=RunConfig(name=run_name(f"local-{node_id}"), storage_path=str(cfg.cache_dir / "train")),
    )


class NodeUnavailable(EdgefleetError, RuntimeError):
    """The client's edge node has no live raylet: a Train job there would wait for it forever."""


def _require_alive(node_id: str) -> None:
    # Ray Train queues a job whose label selector no live node matches, with no timeout; a dead
    # site must be named at once (the coordinator drops it from the round as a straggler).
    import ray

    from edgefleet.platform.topology import describe_nodes

    if not any(n.node_id == node_id and n.alive for n in describe_nodes(ray.nodes())):
        raise NodeUnavailable(f"edge node {node_id!r} has no live raylet in the cluster; is its host up?")


def run_name(prefix: str) -> str:
    """A Train run name that never collides, even for jobs started in the same second."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}"


def fit_and_load(trainer: Any, filename: str, what: str) -> tuple[dict[str, Any], float]:
    """Run ``trainer`` to the end; (what rank 0 saved as ``filename`` in its checkpoint, wall s)."""
    import torch

    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"{what} reported no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / filename, weights_only=False), wall


def _job_result(saved: dict[str, Any], wall: float, node_id: str, workers: int) -> JobResult:
    update = LocalUpdate(**saved["update"])
    return JobResult(
        update,
        wall,
        update.seconds,
        node_id,
        workers,
        saved["ran_on"],
        saved["ranks_in_sync"],
        saved["worker_pid"],
        saved["world_size"],
    )


def run_local_update(
    cfg: EdgefleetConfig,
    node_id: str,
    *,
    adapter: dict[str, Any] | None = None,
    hp: LocalHyper = DEFAULT_HYPER,
    private: bool = True,
    workers: int = 1,
    accountant_state: dict[str, Any] | None = None,
    block_size: int = 128,
    cpus_per_worker: float = 0.5,
    threads: int = 1,
) -> JobResult:
    """One private local update on ``node_id``'s own data, as a Ray Train job on that node.

    Raises:
        ValueError: ``node_id`` is not an edge node of ``cfg``.
        NodeUnavailable: the node has no live raylet.
        FileNotFoundError: the node's data directory holds no text (``edgefleet train data`` writes it).
    """
    trainer = _trainer(
        cfg,
        node_id,
        {},
        adapter=adapter,
        hp=hp,
        private=private,
        workers=workers,
        accountant_state=accountant_state,
        block_size=block_size,
        cpus_per_worker=cpus_per_worker,
        threads=threads,
    )
    saved, wall = fit_and_load(trainer, UPDATE_FILE, f"the local update on {node_id}")
    return _job_result(saved, wall, node_id, workers)


def await_answer(get: Any, seq: int, timeout_s: float, who: str, error: Any = lambda: None) -> SessionReply:
    """The reply to task ``seq`` from an answers queue's ``get(block, timeout)``. A reply to an
    older task (a straggler's, arriving after its caller gave up) is skipped, never taken for this one.

    Raises:
        TimeoutError: no answer to ``seq`` within ``timeout_s``.
        RuntimeError: the session said it stopped (``error()`` says why).
    """
    import queue

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            answer = get(block=True, timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"{who} did not answer within {timeout_s:g} s") from None
        if isinstance(answer, SessionStopped):
            raise RuntimeError(f"the training session on {who} stopped: {error()}")
        if answer.seq == seq:
            return answer


class LocalTrainingSession:
    """One long-lived Train run on a client's node that serves many rounds.

    A ``TorchTrainer.fit()`` costs ~12 s here before any training; a federation round must not pay
    that per client. The session starts the run once (in a background thread: ``fit()`` blocks),
    then each :meth:`call` hands the run's ``handler`` a message through the session's
    :class:`~edgefleet.train.mailbox.Mailbox` and gets its reply back the same way. Base model and
    data stay loaded in the worker (the federation's participant: :mod:`edgefleet.federation.participant`).

    Example (on a fleet)::

        with LocalTrainingSession(cfg, "edge-1", handler=handle) as session:
            plan = session.call(PlanRequest(hp))
    """

    def __init__(
        self,
        cfg: EdgefleetConfig,
        node_id: str,
        *,
        handler: Any,
        private: bool = True,
        block_size: int = 128,
        cpus_per_worker: float = 0.5,
        threads: int = 1,
    ) -> None:
        """``handler(base, blocks, message, context: SessionContext) -> reply`` answers the messages
        :meth:`call` sends; it runs on the node, in the worker, and must be importable there."""
        import itertools
        import threading

        self.node_id = node_id
        self._seq = itertools.count(1)
        self._mailbox = Mailbox()
        extra = {"mailbox": self._mailbox, "handler": handler}
        self._trainer = _trainer(
            cfg,
            node_id,
            extra,
            adapter=None,
            hp=DEFAULT_HYPER,
            private=private,
            workers=1,
            accountant_state=None,
            block_size=block_size,
            cpus_per_worker=cpus_per_worker,
            threads=threads,
        )
        self.error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._fit, name=f"train-session-{node_id}", daemon=True)
        self._thread.start()

    def _fit(self) -> None:
        try:
            result = self._trainer.fit()
            if result.error:
                self.error = result.error
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on an update
            self.error = exc
        finally:
            import ray

            if ray.is_initialized():  # after the driver disconnected, a put would silently re-connect it
                try:
                    self._mailbox.put_answer(SessionStopped())
                except ray.exceptions.RayActorError:  # closed while the run still ended: nobody waits
                    pass
                if self._closing:  # close() gave up waiting for the run to end: the mailbox goes now
                    self._mailbox.close()

    @property
    def alive(self) -> bool:
        """Whether the Train run still serves tasks (False once its worker died or it was closed)."""
        return self._thread.is_alive()

    def call(self, message: Any, timeout_s: float = 900) -> Any:
        """Hand the session's handler one message and wait for its own reply; a reply to an older
        message that outlived its caller's timeout (a straggler's) is skipped, never mistaken for this one.

        Raises:
            TimeoutError: no reply within ``timeout_s``.
            StepFailed: the handler raised on the node (the session goes on).
            RuntimeError: the session has stopped.
        """
        if not self._thread.is_alive():
            raise RuntimeError(f"the training session on {self.node_id} has stopped: {self.error}")
        seq = next(self._seq)
        self._mailbox.put_task(SessionTask(seq, message))
        answer = await_answer(self._mailbox.get_answer, seq, timeout_s, self.node_id, lambda: self.error)
        if answer.failed:
            raise StepFailed(answer.error)
        return answer.reply

    def close(self, timeout_s: float = 60) -> None:
        self._closing = True
        if self._thread.is_alive():
            self._mailbox.put_task(None)
            self._thread.join(timeout_s)
        if not self._thread.is_alive():  # else the run ends on its own (a straggler's task) and closes it
            self._mailbox.close()

    def __enter__(self) -> LocalTrainingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
