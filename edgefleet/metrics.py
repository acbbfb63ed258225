"""Every edgefleet metric, defined here and nowhere else, exported through Ray's metrics agent.

Ray exports each metric on its node's metrics port (``ray start --metrics-export-port``) with a
``ray_`` prefix (counters also get ``_total``), beside Ray's own ``ray_serve_*`` series, so one
Prometheus scrape job sees both: ``infra/prometheus/prometheus.yml`` scrapes every node and
``infra/grafana/edgefleet.json`` draws every series below (a test keeps the two in step).

Call sites use the functions at the bottom, which say what happened, not how it is counted.

Ray 2.60 exports a histogram's ``_sum`` from bucket midpoints, not from the observed values (a
181 s round showed as 210 s), so dashboards use the buckets (quantiles) and, where an exact value
matters, a gauge beside the histogram (``edgefleet_federation_last_round_seconds``).
Outside Ray (pure unit tests, the in-process coordinator) every call is a no-op.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

# Milliseconds: a short edge answer is ~50 ms, a long cloud one ~60 s.
LATENCY_MS = (10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000)
ROUND_S = (5, 10, 30, 60, 120, 300, 600, 1_200, 3_600)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as defined in Ray; Prometheus sees ray_<name> (+ _total for a counter)
    kind: str  # "counter", "gauge" or "histogram"
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        return f"ray_{self.name}" + ("_total" if self.kind == "counter" else "")

    @property
    def series(self) -> tuple[str, ...]:
        """The Prometheus series names this metric produces."""
        if self.kind == "histogram":
            return tuple(f"ray_{self.name}_{s}" for s in ("bucket", "sum", "count"))
        return (self.exported,)


METRICS = (
    # ---- the request path (Gateway)
    MetricSpec(
        "edgefleet_requests",
        "counter",
        "Requests by where they ran and how they ended (outcome: ok, error, rejected, cancelled).",
        ("tier", "node", "outcome"),
    ),
    MetricSpec(
        "edgefleet_sla",
        "counter",
        "Requests with a deadline, by whether they finished within it (result: met, missed).",
        ("tier", "node", "result"),
    ),
    MetricSpec(
        "edgefleet_prediction_error_ms",
        "histogram",
        "Router's predicted minus actual completion time, "
        "as a magnitude; direction=under means the request took longer than predicted.",
        ("node", "direction"),
        LATENCY_MS,
    ),
    MetricSpec(
        "edgefleet_ttft_ms",
        "histogram",
        "Time to first token, from arrival at the Gateway.",
        ("tier", "node"),
        LATENCY_MS,
    ),
    MetricSpec(
        "edgefleet_latency_ms",
        "histogram",
        "Total request latency, from arrival at the Gateway.",
        ("tier", "node"),
        LATENCY_MS,
    ),
    MetricSpec("edgefleet_generated_tokens", "counter", "Completion tokens sent to users.", ("tier", "node")),
    MetricSpec(
        "edgefleet_hedges", "counter", "Hedged requests (a second copy sent to the cloud), by target hedged.", ("node",)
    ),
    MetricSpec(
        "edgefleet_failovers", "counter", "A target failed a request and the next candidate took over.", ("node",)
    ),
    MetricSpec("edgefleet_rejections", "counter", "Requests refused, by reason.", ("reason",)),
    # ---- the nodes (EdgeNode actors and Cloud replicas report their own state)
    MetricSpec("edgefleet_queue_depth", "gauge", "Requests waiting in a node's batcher.", ("tier", "node")),
    MetricSpec(
        "edgefleet_model_info",
        "gauge",
        "1 for the model version a node serves now, 0 for earlier ones.",
        ("tier", "node", "model", "version"),
    ),
    # ---- federation (the coordinator)
    MetricSpec("edgefleet_federation_round", "gauge", "Last committed federated round.", ("run",)),
    MetricSpec(
        "edgefleet_federation_last_commit_timestamp", "gauge", "Unix time the run last committed a round.", ("run",)
    ),
    MetricSpec(
        "edgefleet_federation_last_round_seconds", "gauge", "Wall time of the last committed round, exact.", ("run",)
    ),
    MetricSpec("edgefleet_federation_round_seconds", "histogram", "Wall time of a committed round.", ("run",), ROUND_S),
    MetricSpec(
        "edgefleet_epsilon",
        "gauge",
        "Privacy spent by a client: composed epsilon at the run's delta.",
        ("run", "client"),
    ),
    MetricSpec("edgefleet_epsilon_budget", "gauge", "A client's total privacy budget (epsilon).", ("run", "client")),
    # ---- the model registry and rollout
    MetricSpec("edgefleet_champion_version", "gauge", "Registry version the champion alias points at.", ("model",)),
    MetricSpec(
        "edgefleet_rollout_state",
        "gauge",
        "1 for the rollout's current state, 0 for the others (state: idle, canary, promoted, rolled_back, failed).",
        ("model", "state"),
    ),
)
BY_NAME = {m.name: m for m in METRICS}
ROLLOUT_STATES = ("idle", "canary", "promoted", "rolled_back", "failed")

_lock = threading.Lock()
_made: dict[str, Any] = {}
_broken: set[str] = set()
log = logging.getLogger(__name__)


def _metric(name: str) -> Any | None:
    """The process's Ray metric object for ``name``; None when this process is not part of a Ray cluster."""
    import ray

    if not ray.is_initialized():
        return None
    with _lock:
        if name not in _made:
            from ray.util import metrics as rm

            spec = BY_NAME[name]
            kind = {"counter": rm.Counter, "gauge": rm.Gauge, "histogram": rm.Histogram}[spec.kind]
            extra = {"boundaries": list(spec.boundaries)} if spec.kind == "histogram" else {}
            _made[name] = kind(name, description=spec.description, tag_keys=spec.tags, **extra)
        return _made[name]


def _record(name: str, method: str, tags: dict[str, str], value: float) -> None:
    # Observability must never fail a request or a round: a broken metric is logged once and dropped
    # (tests/integration/test_operations.py checks every metric arrives, so none stays broken).
    if name in _broken:
        return
    try:
        if (m := _metric(name)) is not None:
            getattr(m, method)(value, tags=tags)
    except Exception:
        _broken.add(name)
        log.exception("metric %s cannot be recorded; it is dropped in this process", name)


def _count(name: str, tags: dict[str, str], value: float = 1.0) -> None:
    if value:
        _record(name, "inc", tags, value)


def _set(name: str, tags: dict[str, str], value: float) -> None:
    _record(name, "set", tags, value)


def _observe(name: str, tags: dict[str, str], value: float) -> None:
    _record(name, "observe", tags, value)


# ---------------------------------------------------------------- what the code reports


def request_served(end: dict[str, Any], deadline_ms: float) -> None:
    """A request finished with an answer (``end``: the Gateway's end event)."""
    where = {"tier": end.get("tier") or "unknown", "node": end.get("node_id") or "unknown"}
    _count("edgefleet_requests", {**where, "outcome": "ok"})
    if deadline_ms > 0:
        _count("edgefleet_sla", {**where, "result": "met" if end["sla_met"] else "missed"})
    if end.get("predicted_ms"):
        error = end["predicted_ms"] - end["total_ms"]
        _observe(
            "edgefleet_prediction_error_ms",
            {"node": where["node"], "direction": "over" if error >= 0 else "under"},
            max(abs(error), 1e-3),
        )
    _observe("edgefleet_ttft_ms", where, end["ttft_ms"])
    _observe("edgefleet_latency_ms", where, end["total_ms"])
    _count("edgefleet_generated_tokens", where, end.get("completion_tokens", 0))


def request_failed(outcome: str, reason: str | None = None, *, tier: str = "none", node: str = "none") -> None:
    """A request ended without an answer: ``rejected`` (refused, with a reason), ``error`` or ``cancelled``."""
    _count("edgefleet_requests", {"tier": tier, "node": node, "outcome": outcome})
    if outcome == "rejected" and reason:
        _count("edgefleet_rejections", {"reason": reason})


def hedged(node: str) -> None:
    _count("edgefleet_hedges", {"node": node})


def failed_over(node: str) -> None:
    _count("edgefleet_failovers", {"node": node})


def node_state(tier: str, node: str, queue_depth: int) -> None:
    _set("edgefleet_queue_depth", {"tier": tier, "node": node}, queue_depth)


def model_serving(tier: str, node: str, model: str, version: str, previous: tuple[str, str] | None = None) -> None:
    """``node`` now serves ``model`` at ``version``; ``previous`` (model, version) is set to 0."""
    if previous is not None and previous != (model, version):
        _set("edgefleet_model_info", {"tier": tier, "node": node, "model": previous[0], "version": previous[1]}, 0)
    _set("edgefleet_model_info", {"tier": tier, "node": node, "model": model, "version": version}, 1)


def round_committed(run: str, round_id: int, wall_s: float, epsilon: dict[str, float], budget: float) -> None:
    import time

    _set("edgefleet_federation_round", {"run": run}, round_id)
    _set("edgefleet_federation_last_commit_timestamp", {"run": run}, time.time())
    _set("edgefleet_federation_last_round_seconds", {"run": run}, wall_s)
    _observe("edgefleet_federation_round_seconds", {"run": run}, wall_s)
    for client, eps in epsilon.items():
        _set("edgefleet_epsilon", {"run": run, "client": client}, eps)
        _set("edgefleet_epsilon_budget", {"run": run, "client": client}, budget)


def champion(model: str, version: str | None) -> None:
    if version is not None and str(version).isdigit():
        _set("edgefleet_champion_version", {"model": model}, int(version))


def champion_of(registry: Any) -> None:
    """Report ``registry``'s champion; a registry that cannot answer now is skipped, never raised."""
    try:
        version = registry.champion_version()
    except Exception:  # noqa: BLE001 - the work that came before (a round, a rollout) is already done
        log.warning("champion version unavailable for the metrics", exc_info=True)
        return
    champion(registry.name, version)


def rollout_state(model: str, state: str) -> None:
    for s in ROLLOUT_STATES:
        _set("edgefleet_rollout_state", {"model": model, "state": s}, 1 if s == state else 0)


# ---------------------------------------------------------------- reading them back


def endpoints(ray_nodes: list[dict[str, Any]]) -> list[str]:
    """Every live node's metrics URL (what Prometheus scrapes), from ``ray.nodes()``."""
    return [
        f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
        for n in ray_nodes
        if n.get("Alive") and n.get("MetricsExportPort")
    ]


def scrape(urls: list[str], timeout_s: float = 5.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """edgefleet's samples from every endpoint: series name → [(labels, value)]. Ray's own series are left out.

    An endpoint that does not answer is skipped (a node just died): the rest still count.
    """
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor
    from http.client import HTTPException

    from prometheus_client.parser import text_string_to_metric_families

    def fetch(url: str) -> list[tuple[str, dict[str, str], float]]:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                families = list(text_string_to_metric_families(r.read().decode()))
        except (OSError, HTTPException, ValueError):  # gone, cut short, or half-written
            return []
        return [
            (s.name, dict(s.labels), s.value)
            for f in families
            for s in f.samples
            if s.name.startswith("ray_edgefleet_")
        ]

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    with ThreadPoolExecutor(max(1, min(16, len(urls)))) as pool:  # one slow node must not add up
        for samples in pool.map(fetch, urls):
            for name, labels, value in samples:
                out.setdefault(name, []).append((labels, value))
    return out
