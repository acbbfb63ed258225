"""``edgefleet bench calibrate``: measure a model's timing profile for the synthetic backends."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from edgefleet.cli.fleet import console, fetch_model
from edgefleet.cli.tables import show
from edgefleet.config import load_config


def add_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="measurements").add_subparsers(dest="bench_command", required=True)
    cal = bench.add_parser("calibrate", help="measure a model's timing profile for synthetic backends")
    cal.add_argument("--source", default="smollm2")
    cal.add_argument("--quantization", default="int8", choices=["none", "int8", "bf16"])
    cal.add_argument("--threads", type=int, default=1)
    cal.add_argument("--out", help="also write the profile as JSON here")
    cal.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from edgefleet.config import ModelSpec
    from edgefleet.platform.calibrate import calibrate

    cfg = load_config(args.config, ray_address=args.address)
    spec = ModelSpec(source=args.source, quantization=args.quantization, threads=args.threads)
    fetch_model(cfg, spec.source)
    with console.status(f"measuring {spec.source} {spec.quantization} on this machine"):
        profile = calibrate(spec)
    table = Table(title=f"timing profile: {profile.model}")
    table.add_column("measure")
    table.add_column("ms")
    table.add_row("prefill per prompt token", f"{profile.prefill_ms_per_token:.2f}")
    for batch, ms in profile.decode_ms_per_step.items():
        table.add_row(f"decode step at batch {batch}", f"{ms:.1f}")
    show(console, table)
    console.print(f"synthetic backend that behaves like it: model: {{source: {profile.synthetic_source}}}")
    if args.out:
        written = {**dataclasses.asdict(profile), "synthetic_source": profile.synthetic_source}
        Path(args.out).write_text(json.dumps(written, indent=2) + "\n")
    return 0
