"""``edgefleet train …``: write the clients' data, run one private local update on a node.

``edgefleet train local --node edge-1`` joins the fleet ``edgefleet up`` started (or starts the
embedded one for the run), runs the update as a Ray Train job on that node's own data, and prints
the training loss, the held-out loss before and after, ε and the wall time.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from edgefleet.cli.fleet import console, fetch_model, join_or_start
from edgefleet.cli.tables import show
from edgefleet.config import EdgefleetConfig, load_config
from edgefleet.errors import ConfigError


def add_parser(sub: Any) -> None:
    train = sub.add_parser("train", help="private training").add_subparsers(dest="train_command", required=True)
    data = train.add_parser("data", help="split the demo corpus by topic into each edge node's data directory")
    data.set_defaults(func=cmd_train_data)
    local = train.add_parser("local", help="one DP local update on one edge node's own data (Ray Train job)")
    local.add_argument("--node", required=True, help="edge node id, e.g. edge-1")
    # Small defaults: one SmolLM2 step on 16 × 64 tokens takes ~15 s on 2 CPU cores.
    local.add_argument("--steps", type=int, default=6, help="optimizer steps (default: %(default)s)")
    local.add_argument("--batch-size", type=int, default=16, help="expected logical batch (default: %(default)s)")
    local.add_argument("--block-size", type=int, default=64, help="tokens per sample (default: %(default)s)")
    local.add_argument("--lr", type=float, default=2e-3)
    local.add_argument("--workers", type=int, default=1, choices=[1, 2], help="Train workers on the node (2: DPDDP)")
    local.add_argument("--no-dp", action="store_true", help="train without differential privacy (comparison only)")
    local.set_defaults(func=cmd_train_local)
    distill = train.add_parser(
        "distill",
        help="distil the cloud model into the edge model on the cloud node (DeepSpeed ZeRO-2, public text only)",
    )
    distill.add_argument("--steps", type=int, default=10, help="optimizer steps (default: %(default)s)")
    distill.add_argument(
        "--workers", type=int, default=2, help="Train workers on the cloud node (default: %(default)s)"
    )
    distill.set_defaults(func=cmd_train_distill)


def cmd_train_data(args: argparse.Namespace) -> int:
    from edgefleet.train.data import held_out_dir, node_data_dir, write_demo_shards

    cfg = load_config(args.config, ray_address=args.address)
    split = write_demo_shards(cfg)
    for node in cfg.fleet.edge_nodes:
        console.print(f"{node.id}: {len(split.shards[node.id])} topics → {node_data_dir(cfg, node)}")
    console.print(f"held out: {len(split.held_out)} topics → {held_out_dir(cfg)}")
    return 0


def cmd_train_local(args: argparse.Namespace) -> int:
    from edgefleet.train.data import write_demo_shards
    from edgefleet.train.dp import LocalHyper
    from edgefleet.train.jobs import run_local_update

    cfg = load_config(args.config, ray_address=args.address)
    node = next((n for n in cfg.fleet.edge_nodes if n.id == args.node), None)
    if node is None:
        raise ConfigError(
            f"--node {args.node!r} is not an edge node; known: {', '.join(n.id for n in cfg.fleet.edge_nodes)}"
        )
    if args.steps < 1 or args.batch_size < 1 or args.block_size < 8:
        raise ConfigError("--steps and --batch-size must be >= 1, --block-size >= 8")
    write_demo_shards(cfg)  # a node with its own data_dir keeps its data
    fetch_model(cfg, node.model.source)
    hp = LocalHyper(
        lr=args.lr,
        batch_size=args.batch_size,
        physical_batch=min(8, args.batch_size),
        max_steps=args.steps,
        epochs=100.0,
    )
    fleet, owned = join_or_start(cfg)
    try:
        with console.status(f"held-out loss of the current model ({node.model.source})"):
            held, base = _held_out(cfg, node, args.block_size)
            from edgefleet.train.dp import held_out_loss

            before = held_out_loss(base, None, held, hp)
        with console.status(
            f"Ray Train job on {node.id}: {args.steps} {'non-private' if args.no_dp else 'DP-SGD'} "
            f"steps on its own data"
        ):
            result = run_local_update(
                cfg,
                node.id,
                hp=hp,
                private=not args.no_dp,
                workers=args.workers,
                block_size=args.block_size,
                cpus_per_worker=1.0 / args.workers,
                threads=max(1, 2 // args.workers),
            )
        after = held_out_loss(base, result.update.adapter, held, hp)
    finally:
        if owned:
            fleet.shutdown()
    u = result.update
    how = f"DP-SGD, {cfg.privacy.accountant.upper()} accountant" if u.private else "no DP"
    table = Table(title=f"local update on {node.id} ({how})")
    for col in (
        "samples",
        "steps",
        "train loss",
        "held-out loss before → after",
        "ε (δ)",
        "noise σ",
        "samples/s",
        "train s",
        "job wall s",
    ):
        table.add_column(col)
    eps = f"{u.epsilon:.2f} ({u.delta_privacy:g})" if u.private else "∞ (no DP)"
    table.add_row(
        str(u.num_samples),
        str(u.steps),
        f"{u.loss:.3f}",
        f"{before:.3f} → {after:.3f}",
        eps,
        f"{u.noise_multiplier:.2f}",
        f"{u.samples_per_s:.1f}",
        f"{result.train_s:.1f}",
        f"{result.wall_s:.1f}",
    )
    show(console, table)
    return 0


def _held_out(cfg: EdgefleetConfig, node: Any, block_size: int, limit: int = 32) -> tuple[Any, Any]:
    """The held-out topics' first blocks, and the node's full-precision base model."""
    from edgefleet.platform.models import load_trainable
    from edgefleet.train.data import chunk_for_causal_lm, held_out_dir, read_texts

    base, tok = load_trainable(node.model, cfg.cache_dir)
    return chunk_for_causal_lm(read_texts(held_out_dir(cfg)), tok, block_size)[:limit], base


def cmd_train_distill(args: argparse.Namespace) -> int:
    from edgefleet.train.distill import run_distillation

    cfg = load_config(args.config, ray_address=args.address)
    if args.steps < 1 or args.workers < 1:
        raise ConfigError("--steps and --workers must be >= 1")
    teacher, student = cfg.fleet.cloud.model, cfg.fleet.edge_nodes[0].model
    for spec in (teacher, student):
        fetch_model(cfg, spec.source)
    if teacher.source == student.source:
        console.print(
            f"[yellow]teacher and student are both {teacher.source}: the KL starts near 0 "
            "(set a larger cloud model to distil from)"
        )
    fleet, owned = join_or_start(cfg)
    try:
        with console.status(f"DeepSpeed ZeRO-2 on the cloud node: {args.steps} steps, {args.workers} workers"):
            result = run_distillation(cfg, steps=args.steps, workers=args.workers, cpus_per_worker=0.5)
    finally:
        if owned:
            fleet.shutdown()
    table = Table(title=f"distillation {teacher.source} (teacher) → {student.source} (student), public text")
    for col in ("steps", "KL first", "KL last", "job wall s"):
        table.add_column(col)
    table.add_row(str(len(result.kl)), f"{result.kl[0]:.4f}", f"{result.kl[-1]:.4f}", f"{result.wall_s:.1f}")
    show(console, table)
    return 0
