"""``edgefleet audit``: an empirical check that the claimed ε holds, and that it visibly breaks without DP.

Runs :func:`edgefleet.audit.run.run_audit` in this process (no Ray, no fleet): canaries in one
client's data, the platform's own DP-SGD and DP-FedAvg, a loss-based membership attack. Prints one
row per setting, writes ``audit.json`` and ``roc.png`` to ``--out`` and exits 1 if the audit fails.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgefleet.cli.fleet import console
from edgefleet.config import load_config
from edgefleet.errors import ConfigError

SETTING_LABELS = {"no_dp": "no DP (control)", "record_dp": "record-level DP-SGD", "user_dp": "user-level DP-FedAvg"}


def add_parser(sub: Any) -> None:
    from edgefleet.audit.run import AuditConfig

    d = AuditConfig()
    audit = sub.add_parser("audit", help="privacy audit: canaries, a membership attack, the empirical ε vs the claim")
    audit.add_argument("--out", help="directory for audit.json and roc.png (default: <cache>/audit)")
    audit.add_argument("--repeats", type=int, default=d.repeats, help="independent trainings (default: %(default)s)")
    audit.add_argument(
        "--canaries",
        type=int,
        default=d.canaries,
        help="canaries inserted per repeat; as many are held out (default: %(default)s)",
    )
    audit.add_argument(
        "--epsilon",
        type=float,
        default=d.epsilon,
        help="target ε of the DP settings; the claim is what the accountant then reports (default: %(default)s)",
    )
    audit.add_argument("--seed", type=int, default=d.seed, help="canary and LoRA-init seed (default: %(default)s)")
    audit.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from edgefleet.audit.run import AuditConfig, planned_total, run_audit

    if args.repeats < 1 or args.canaries < 1 or args.epsilon <= 0:
        raise ConfigError("--repeats and --canaries must be >= 1, --epsilon > 0")
    out = Path(args.out) if args.out else load_config(args.config, ray_address=args.address).cache_dir / "audit"
    cfg = AuditConfig(epsilon=args.epsilon, canaries=args.canaries, repeats=args.repeats, seed=args.seed)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress, warnings.catch_warnings():
        # Known and harmless here: Opacus' note on its non-cryptographic RNG (the audit needs no
        # secure noise) and torch's on backward hooks over a frozen base.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        task = progress.add_task("training", total=planned_total(cfg))
        report = run_audit(
            cfg, on_progress=lambda n, s: progress.update(task, advance=n, description=f"training: {SETTING_LABELS[s]}")
        )
    console.print(results_table(report))
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(to_json(report), indent=2, allow_nan=False) + "\n")
    plot_roc(report, out / "roc.png")
    for reason in report.verdict.reasons:
        console.print(f"[red]✗[/] {reason}")
    verdict = "[green]PASSED" if report.passed else "[red]FAILED"
    console.print(f"audit {verdict}[/] in {report.seconds:.0f} s; {out / 'audit.json'}, {out / 'roc.png'}")
    return 0 if report.passed else 1


def results_table(report: Any) -> Table:
    from edgefleet.audit.stats import leaks_clearly, max_provable_epsilon

    r0 = report.results[0]
    ceiling = max_provable_epsilon(r0.members, r0.non_members, r0.delta)
    cfg = report.config
    table = Table(
        title=f"privacy audit: {cfg.canaries} canaries in / {cfg.canaries} out × {cfg.repeats} repeats, "
        f"δ = {cfg.delta:g} (no attack of this size can prove ε > {ceiling:.2f})"
    )
    for col in ("setting", "ε claimed", "attack AUC", "ε lower bound (95 %)", "bound check", "result"):
        table.add_column(col)
    private = [r for r in report.results if r.private]
    for r in report.results:
        if r.private:
            check = f"{r.epsilon_lower:.2f} {'≤' if r.within_bound else '>'} {r.epsilon_claimed:.2f}"
            ok = r.within_bound
        else:  # the control must break the private runs' claims, or the attack proves nothing
            ok = bool(private) and leaks_clearly(r, private, auc_margin=cfg.auc_margin)
            claim = max((x.epsilon_claimed for x in private), default=math.nan)
            check = f"must leak: {r.epsilon_lower:.2f} {'>' if r.epsilon_lower > claim else '≤'} {claim:.2f}"
        table.add_row(
            SETTING_LABELS[r.name],
            f"{r.epsilon_claimed:.2f}" if r.private else "∞ (no DP)",
            f"{r.auc:.3f}",
            f"{r.epsilon_lower:.2f}",
            check,
            "[green]pass" if ok else "[red]FAIL",
        )
    return table


def to_json(report: Any) -> dict[str, Any]:
    from edgefleet.audit.stats import max_provable_epsilon

    def finite(x: Any) -> Any:  # JSON has no ∞: null stands for "no DP, no bound"
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [finite(v) for v in x]
        return x

    r0 = report.results[0]
    return finite(
        {
            "passed": report.passed,
            "reasons": list(report.verdict.reasons),
            "seconds": report.seconds,
            "config": asdict(report.config),
            "faults": report.faults,
            "max_provable_epsilon": max_provable_epsilon(r0.members, r0.non_members, r0.delta),
            "settings": [
                {
                    **asdict(r),
                    "epsilon_lower": r.epsilon_lower,
                    "within_bound": r.within_bound,
                    "details": report.details[r.name],
                    "scores": {"members": report.scores[r.name][0], "non_members": report.scores[r.name][1]},
                }
                for r in report.results
            ],
        }
    )


def plot_roc(report: Any, path: Path) -> None:
    """ROC curves of the attack, linear and log-log (the low-FPR end is where leakage shows), with the
    region an (ε, δ)-DP mechanism allows at the claimed ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgefleet.audit.stats import roc_curve

    claims = [r.epsilon_claimed for r in report.results if r.private]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, log in zip(axes, (False, True), strict=True):
        for r in report.results:
            fpr, tpr = roc_curve(*report.scores[r.name])
            ax.plot(
                fpr,
                tpr,
                drawstyle="steps-post",
                label=f"{SETTING_LABELS[r.name]}: AUC {r.auc:.3f}, ε ≥ {r.epsilon_lower:.2f}",
            )
        grid = [10 ** (-3 + 3 * i / 200) for i in range(201)] if log else [i / 200 for i in range(201)]
        ax.plot(grid, grid, color="grey", lw=0.8, ls=":", label="chance")
        if claims:
            eps, delta = max(claims), report.results[0].delta
            # both (ε, δ) inequalities: TPR ≤ e^ε·FPR + δ and 1 − FPR ≤ e^ε·(1 − TPR) + δ
            limit = [min(1.0, math.exp(eps) * x + delta, 1 - math.exp(-eps) * (1 - delta - x)) for x in grid]
            ax.plot(grid, limit, color="black", ls="--", label=f"(ε, δ)-DP limit at the claimed ε = {eps:.2f}")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(1e-3, 1)
            ax.set_ylim(1e-3, 1.05)
            ax.set_title("log-log (an empirical FPR of 0 is off the axis)")
        else:
            ax.set_title("linear")
    axes[0].legend(loc="lower right", fontsize=8)
    cfg = report.config
    fig.suptitle(
        f"membership attack on canaries ({cfg.canaries} in / {cfg.canaries} out × {cfg.repeats} repeats): "
        f"audit {'passed' if report.passed else 'FAILED'}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
