"""Every edgefleet metric, defined here and nowhere else, exported through Ray's metrics agent.

Ray exports each metric on its node's metrics port (``ray start --metrics-export-port``) with a
``ray_`` prefix (counters also get ``_total``), beside Ray's own ``ray_serve_*`` series, so one
Prometheus scrape job sees both: ``infra/prometheus/prometheus.yml`` scrapes every node and
``infra/grafana/edgefleet.json`` draws every series below (a test keeps the two in step).

Call sites use the functions at the bottom, which say what happened, not how it is counted.

Names follow Prometheus' conventions (as vLLM's ``vllm:*_seconds`` and ``vllm:*_tokens_total`` do):
base units, the unit in the name (``_seconds``), and counters named for what they count (Ray adds
``_total``). The millisecond histograms of 0.1 (``*_ms``) and ``edgefleet_generated_tokens`` are still
exported beside their replacements, deprecated, until 0.3 (:data:`REMOVED_IN`): each spec names its
replacement (``replaced_by``) and recording the replacement records the deprecated twin too, so no
call site names a deprecated metric.

Ray 2.60 exports a histogram's ``_sum`` from bucket midpoints, not from the observed values (a
181 s round showed as 210 s), so dashboards use the buckets (quantiles) and, where an exact value
matters, a gauge beside the histogram (``edgefleet_federation_last_round_seconds``).
Outside Ray (pure unit tests, the in-process coordinator) every call is a no-op. Inside, a gauge
is set again every second while its process lives (see ``KEEP_PERIOD_S``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

# Seconds: a short edge answer is ~50 ms, a long cloud one ~60 s.
LATENCY_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds between two tokens of a stream: a decode step is ~1 ms (synthetic) to ~100 ms (a CPU model
# under a full batch); the top buckets catch a stall (a hedge or a failover between two tokens).
INTER_TOKEN_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
ROUND_S = (5, 10, 30, 60, 120, 300, 600, 1_200, 3_600)
# Deprecated, removed in 0.3: the boundaries of the *_ms histograms, LATENCY_S in milliseconds.
LATENCY_MS = tuple(round(b * 1000) for b in LATENCY_S)
REMOVED_IN = "0.3"  # the release that drops every metric with a replaced_by


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as defined in Ray; Prometheus sees ray_<name> (+ _total for a counter)
    kind: str  # "counter", "gauge" or "histogram"
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()
    # Deprecated (removed in REMOVED_IN): the metric that replaces this one. Recording the replacement
    # records this one too, scaled by `scale` (1000 for a *_ms twin of a *_seconds histogram).
    replaced_by: str = ""
    scale: float = 1.0

    @property
    def deprecated(self) -> bool:
        return bool(self.replaced_by)

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
        "edgefleet_prediction_error_seconds",
        "histogram",
        "Router's predicted minus actual completion time, in seconds, "
        "as a magnitude; direction=under means the request took longer than predicted.",
        ("node", "direction"),
        LATENCY_S,
    ),
    MetricSpec(
        "edgefleet_ttft_seconds",
        "histogram",
        "Time to first token, from arrival at the Gateway, in seconds.",
        ("tier", "node"),
        LATENCY_S,
    ),
    MetricSpec(
        "edgefleet_latency_seconds",
        "histogram",
        "Total request latency, from arrival at the Gateway, in seconds.",
        ("tier", "node"),
        LATENCY_S,
    ),
    MetricSpec(
        "edgefleet_inter_token_latency_seconds",
        "histogram",
        "Time between two tokens of a streamed answer, as the Gateway passed them on, in seconds; "
        "one observation per token after the first chunk.",
        ("tier", "node"),
        INTER_TOKEN_S,
    ),
    MetricSpec("edgefleet_prompt_tokens", "counter", "Prompt tokens of answered requests.", ("tier", "node")),
    MetricSpec("edgefleet_generation_tokens", "counter", "Completion tokens sent to users.", ("tier", "node")),
    # Deprecated, removed in 0.3: exported beside their replacements for one release.
    MetricSpec(
        "edgefleet_prediction_error_ms",
        "histogram",
        "Deprecated, removed in 0.3: use edgefleet_prediction_error_seconds. The same, in milliseconds.",
        ("node", "direction"),
        LATENCY_MS,
        replaced_by="edgefleet_prediction_error_seconds",
        scale=1000.0,
    ),
    MetricSpec(
        "edgefleet_ttft_ms",
        "histogram",
        "Deprecated, removed in 0.3: use edgefleet_ttft_seconds. Time to first token, in milliseconds.",
        ("tier", "node"),
        LATENCY_MS,
        replaced_by="edgefleet_ttft_seconds",
        scale=1000.0,
    ),
    MetricSpec(
        "edgefleet_latency_ms",
        "histogram",
        "Deprecated, removed in 0.3: use edgefleet_latency_seconds. Total request latency, in milliseconds.",
        ("tier", "node"),
        LATENCY_MS,
        replaced_by="edgefleet_latency_seconds",
        scale=1000.0,
    ),
    MetricSpec(
        "edgefleet_generated_tokens",
        "counter",
        "Deprecated, removed in 0.3: use edgefleet_generation_tokens (the same count).",
        ("tier", "node"),
        replaced_by="edgefleet_generation_tokens",
    ),
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
    MetricSpec(
        "edgefleet_nodes_off_champion",
        "gauge",
        "Edge nodes not serving the champion version, as the reconciler last saw them (a node that did not "
        "answer counts); during a canary window, the nodes outside it.",
        ("model",),
    ),
)
BY_NAME = {m.name: m for m in METRICS}
DEPRECATED = tuple(m for m in METRICS if m.deprecated)
_TWINS = {m.name: tuple(d for d in DEPRECATED if d.replaced_by == m.name) for m in METRICS}
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
    _record_one(name, method, tags, value)
    for twin in _TWINS.get(name, ()):  # the deprecated names it replaces, until REMOVED_IN
        _record_one(twin.name, method, tags, value * twin.scale)


def _record_one(name: str, method: str, tags: dict[str, str], value: float) -> None:
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


# Ray 2.60's metrics agent keeps a gauge's value for two export intervals after the last `set`,
# then drops it on scrape (so a dead process's series age out). A gauge set once (the round, ε,
# the champion, the rollout state) was therefore visible for ~2 s: the operations test's scraper
# missed the federation gauges in one CI run, and Prometheus at a 15 s scrape would miss them most
# of the time. So this process sets every gauge it holds again each KEEP_PERIOD_S, for as long as
# it lives; when it exits, its series age out as Ray intends.
KEEP_PERIOD_S = 1.0  # Ray exports at most once a second
_held: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[dict[str, str], float]] = {}
_keeper: threading.Thread | None = None
# Orders a set and its remembering against the keeper's writes (a newer value is never overwritten by
# an older one). Taken before _lock (in _metric), never after it.
_held_lock = threading.Lock()


def _set(name: str, tags: dict[str, str], value: float, *, hold: bool = True) -> None:
    """Set a gauge; ``hold``: keep setting it while this process lives (``False``: let it age out)."""
    global _keeper
    import ray

    key = (name, tuple(sorted(tags.items())))
    with _held_lock:
        _record(name, "set", tags, value)
        if not hold or not ray.is_initialized():  # outside Ray nothing is exported: nothing to keep
            _held.pop(key, None)
            return
        _held[key] = (tags, value)
        if _keeper is None or not _keeper.is_alive():
            _keeper = threading.Thread(target=_keep_gauges, name="edgefleet-gauges", daemon=True)
            _keeper.start()


def _keep_gauges() -> None:
    import ray

    while True:
        time.sleep(KEEP_PERIOD_S)
        with _held_lock:
            if not ray.is_initialized():  # shut down: the next session starts with nothing held
                _held.clear()
                continue
            for (name, _), (tags, value) in list(_held.items()):
                _record(name, "set", tags, value)


def _observe(name: str, tags: dict[str, str], value: float) -> None:
    _record(name, "observe", tags, value)


# ---------------------------------------------------------------- what the code reports


class TokenClock:
    """Times the chunks of one streamed answer as they pass the Gateway, for the inter-token latency.

    A chunk (a delta event) usually carries one token, but can carry several: the engine holds back
    half a UTF-8 character, text that may still turn into a stop sequence, or whitespace the client
    already has, and sends it with the next token. The gap since the previous chunk is then split
    evenly over the tokens the chunk brought (``gap / n``, n times), so the histogram counts tokens,
    not chunks, and a chunk of three tokens does not read as one slow token. The first chunk's tokens
    are the time to first token, not inter-token latency.

    ``tokens`` in a delta is the running count of the target that sent it. A chunk whose count did
    not grow brings only held-back text of tokens already counted (the rest of the text when a stop
    sequence did not match): it is skipped. A count that went down is a new target after a failover,
    counting from zero again. The gap across a failover or a hedge is kept: the client waited that
    long between two tokens. A delta without a count (none today) is taken as one token.
    """

    __slots__ = ("gaps", "_at", "_tokens")

    def __init__(self) -> None:
        self.gaps: list[tuple[float, int]] = []  # (seconds since the previous chunk, tokens it brought)
        self._at: float | None = None
        self._tokens = 0

    def chunk(self, tokens: int | None, now: float | None = None) -> None:
        """A chunk left for the client; ``tokens``: its target's running count (None: one more)."""
        now = time.perf_counter() if now is None else now
        if tokens is None:
            new, self._tokens = 1, self._tokens + 1
        else:
            new = tokens - self._tokens if tokens >= self._tokens else tokens  # went down: a new target
            self._tokens = tokens
        if new <= 0:
            return
        if self._at is not None:
            self.gaps.append((now - self._at, new))
        self._at = now

    def per_token(self) -> list[float]:
        """One inter-token latency (seconds) per token after the first chunk."""
        return [gap / n for gap, n in self.gaps for _ in range(n)]


class Served(Protocol):
    """What the request metrics read of an answer (the Gateway's ``GenerateResult``)."""

    tier: str
    node_id: str
    sla_met: bool
    predicted_ms: float
    ttft_ms: float
    total_ms: float
    prompt_tokens: int
    completion_tokens: int


def request_served(end: Served, deadline_ms: float, clock: TokenClock | None = None) -> None:
    """A request finished with an answer (``end``: its result; ``clock``: its stream's chunks)."""
    where = {"tier": end.tier or "unknown", "node": end.node_id or "unknown"}
    _count("edgefleet_requests", {**where, "outcome": "ok"})
    if deadline_ms > 0:
        _count("edgefleet_sla", {**where, "result": "met" if end.sla_met else "missed"})
    if end.predicted_ms:
        error_s = (end.predicted_ms - end.total_ms) / 1000
        _observe(
            "edgefleet_prediction_error_seconds",
            {"node": where["node"], "direction": "over" if error_s >= 0 else "under"},
            max(abs(error_s), 1e-6),
        )
    _observe("edgefleet_ttft_seconds", where, end.ttft_ms / 1000)
    _observe("edgefleet_latency_seconds", where, end.total_ms / 1000)
    _count("edgefleet_prompt_tokens", where, end.prompt_tokens)
    _count("edgefleet_generation_tokens", where, end.completion_tokens)
    for seconds in clock.per_token() if clock is not None else ():
        _observe("edgefleet_inter_token_latency_seconds", where, seconds)


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
        # 0 once, then it ages out: a node swaps every round, and old versions need no series of their own
        old = {"tier": tier, "node": node, "model": previous[0], "version": previous[1]}
        _set("edgefleet_model_info", old, 0, hold=False)
    _set("edgefleet_model_info", {"tier": tier, "node": node, "model": model, "version": version}, 1)


def round_committed(run: str, round_id: int, wall_s: float, epsilon: dict[str, float], budget: float) -> None:
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


def nodes_off_champion(model: str, count: int) -> None:
    _set("edgefleet_nodes_off_champion", {"model": model}, count)


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


def _ours_only(text: str) -> str:
    """The exposition's edgefleet lines only: Ray's own few thousand series cost most of a parse, and
    a scrape every second (the operations test, `edgefleet status`) would spend a core on them."""
    keep = ("ray_edgefleet_", "# HELP ray_edgefleet_", "# TYPE ray_edgefleet_")
    # split on "\n" only, as Prometheus does: splitlines() would also cut at \x85 or \u2028 in a label value
    return "".join(line + "\n" for line in text.split("\n") if line.startswith(keep))


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
                families = list(text_string_to_metric_families(_ours_only(r.read().decode())))
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
