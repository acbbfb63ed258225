"""Cloud-side distillation: the cloud's model (teacher) taught to the edge model (student).

A ``TorchTrainer`` job on the cloud-labelled node trains the student with DeepSpeed ZeRO stage 2
(gloo on CPU here, NCCL on GPUs in production) to match the teacher's next-token distribution:
KL(teacher ‖ student) at temperature ``T``, times T². It trains on *public* text only, the
docstrings of standard-library modules, never on client data. The result is a new edge base
candidate (a state dict in the job's checkpoint) with the KL curve that produced it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.config import EdgefleetConfig, ModelSpec

STUDENT_FILE = "student.pt"
PUBLIC_MODULES = (
    "collections",
    "json",
    "pathlib",
    "itertools",
    "functools",
    "dataclasses",
    "argparse",
    "typing",
    "asyncio",
    "logging",
    "re",
    "string",
    "textwrap",
    "statistics",
    "random",
    "heapq",
    "bisect",
    "contextlib",
    "enum",
    "csv",
    "datetime",
    "decimal",
    "fractions",
    "shutil",
    "tempfile",
)


def public_corpus() -> list[str]:
    """Docstrings of standard-library modules and their public members: public, and no client's data."""
    import importlib
    import inspect

    texts = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for obj in (module, *(getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_"))):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 80:
                texts.append(doc)
    return list(dict.fromkeys(texts))  # de-duplicated, order kept


def kl_distillation_loss(student_logits: Any, teacher_logits: Any, temperature: float = 2.0) -> Any:
    """Mean over tokens of KL(teacher ‖ student) at ``temperature``, scaled by T² (Hinton et al.)."""
    import torch.nn.functional as F

    t = temperature
    vocab = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, vocab) / t, dim=-1)
    q = F.log_softmax(teacher_logits.reshape(-1, vocab) / t, dim=-1)
    return F.kl_div(s, q, log_target=True, reduction="batchmean") * t * t


@dataclass(frozen=True)
class DistillResult:
    kl: list[float]  # per step, on the training batch
    student_state: dict[str, Any]
    wall_s: float
    ran_on: str  # Ray node id


def _distill_loop(config: dict[str, Any]) -> None:
    """Runs on each Train worker, on the cloud node."""
    import deepspeed
    import ray.train
    import torch
    from ray.train import Checkpoint

    from edgefleet.platform.models import load_trainable
    from edgefleet.train.data import chunk_for_causal_lm

    torch.manual_seed(config["seed"])
    cache = Path(config["cache_dir"])
    teacher, _ = load_trainable(ModelSpec.model_validate(config["teacher"]), cache)
    student, tok = load_trainable(ModelSpec.model_validate(config["student"]), cache)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(
            f"teacher and student vocabularies differ: {teacher.config.vocab_size} vs {student.config.vocab_size}"
        )
    teacher.eval().requires_grad_(False)
    blocks = chunk_for_causal_lm(public_corpus(), tok, config["block_size"])
    _skip_the_cpu_shared_memory_kernel(deepspeed, torch)
    deepspeed.init_distributed(dist_backend="gloo")  # already set up by Train: joins it
    ds_config = {
        "train_micro_batch_size_per_gpu": config["batch_size"],
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": config["lr"], "torch_adam": True}},
        "zero_optimization": {"stage": 2},
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=student, model_parameters=student.parameters(), config=ds_config)
    world, rank = engine.world_size, engine.global_rank
    gen = torch.Generator().manual_seed(config["seed"])
    kls = []
    for _ in range(config["steps"]):
        idx = torch.randint(len(blocks), (config["batch_size"] * world,), generator=gen)[rank::world]
        ids = blocks[idx]
        with torch.no_grad():
            target = teacher(input_ids=ids).logits
        loss = kl_distillation_loss(engine(input_ids=ids).logits, target, config["temperature"])
        engine.backward(loss)
        engine.step()
        kls.append(float(loss.detach()))
    with tempfile.TemporaryDirectory() as d:
        if rank == 0:
            state = {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
            torch.save(
                {"kl": kls, "student": state, "ran_on": ray.get_runtime_context().get_node_id()}, Path(d) / STUDENT_FILE
            )
        ray.train.report(
            {"kl_first": kls[0], "kl_last": kls[-1]}, checkpoint=Checkpoint.from_directory(d) if rank == 0 else None
        )


def _skip_the_cpu_shared_memory_kernel(deepspeed: Any, torch: Any) -> None:
    """Without a GPU, DeepSpeed's first ``init_distributed`` probes a C++ compiler for each of its ops,
    then JIT-compiles a shared-memory allreduce kernel: ~60 s of CPU on a fresh host (measured on 2
    cores; cached in ~/.cache/torch_extensions after). A few CPU workers' allreduce of a small student
    does not repay that, and gloo does it without. The probe's result is only read to decide on that
    kernel (``deepspeed.comm.torch.build_shm_op``), so an empty one skips both. GPUs use NCCL anyway."""
    if not torch.cuda.is_available() and "__compatible_ops__" not in vars(deepspeed.ops):
        deepspeed.ops.__compatible_ops__ = {}


def run_distillation(
    cfg: EdgefleetConfig,
    *,
    teacher: ModelSpec | None = None,
    student: ModelSpec | None = None,
    steps: int = 20,
    batch_size: int = 8,
    block_size: int = 64,
    lr: float = 1e-3,
    temperature: float = 2.0,
    workers: int = 2,
    cpus_per_worker: float = 0.25,
    seed: int = 0,
) -> DistillResult:
    """Distil ``teacher`` (default: the cloud's model) into ``student`` (default: edge-1's) on the cloud node."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from edgefleet.platform.topology import role_selector
    from edgefleet.train.jobs import fit_and_load, run_name

    teacher = teacher or cfg.fleet.cloud.model
    student = student or cfg.fleet.edge_nodes[0].model
    config = {
        "teacher": teacher.model_dump(mode="json"),
        "student": student.model_dump(mode="json"),
        "cache_dir": str(cfg.cache_dir),
        "steps": steps,
        "batch_size": batch_size,
        "block_size": block_size,
        "lr": lr,
        "temperature": temperature,
        "seed": seed,
    }
    trainer = TorchTrainer(
        _distill_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=False,
            resources_per_worker={"CPU": cpus_per_worker},
            label_selector=role_selector("cloud"),
        ),
        run_config=RunConfig(name=run_name("distill"), storage_path=str(cfg.cache_dir / "train")),
    )
    saved, wall = fit_and_load(trainer, STUDENT_FILE, "the distillation job")
    return DistillResult(saved["kl"], saved["student"], wall, saved["ran_on"])
