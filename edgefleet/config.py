"""One typed configuration for the whole platform.

The user's YAML is parsed once, here, into :class:`EdgefleetConfig`; the rest of the code receives
small typed values taken from it, never the raw dict. Every default describes the embedded
one-machine fleet (3 edge nodes and 1 cloud node), so ``EdgefleetConfig()`` is a working config.

Example:
    >>> from edgefleet.config import EdgefleetConfig
    >>> cfg = EdgefleetConfig()
    >>> [n.id for n in cfg.fleet.edge_nodes]
    ['edge-1', 'edge-2', 'edge-3']
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet.errors import ConfigError

NODE_ID_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # a DNS label, so it works as a k8s name too
Quantization = Literal["none", "int8", "bf16"]
Tier = Literal["site", "edge", "cloud"]
# The most tokens one request may generate (gRPC max_new_tokens, OpenAI max_tokens), whatever the model.
MAX_NEW_TOKENS_LIMIT = 1024


def default_cache_dir() -> Path:
    """``$EDGEFLEET_CACHE`` if set, else ``~/.cache/edgefleet``."""
    return Path(os.environ.get("EDGEFLEET_CACHE", Path.home() / ".cache" / "edgefleet")).expanduser()


class _Strict(BaseModel):
    # A typo in a YAML key must fail loudly rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class SyntheticProfile:
    """The timing of a synthetic model (``ModelSpec.source = "synthetic:..."``): its tokens come out
    on this schedule while the process sleeps (see :mod:`edgefleet.platform.synthetic`)."""

    prefill_ms_per_token: float = 1.14  # SmolLM2 int8, 1 thread, measured here by `bench calibrate`
    decode_ms_per_step: float = 19.3
    batch_slowdown: float = 0.064  # (27.9 ms at 8 rows / 19.3 ms alone - 1) / 7
    context_length: int = 4096

    @classmethod
    def parse(cls, source: str) -> SyntheticProfile:
        """``synthetic`` or ``synthetic:<prefill ms/token>:<decode ms/step>[:<batch slowdown>]``."""
        parts = source.split(":")[1:]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"synthetic source {source!r}: expected synthetic:<prefill_ms>:<decode_ms>") from None
        if len(values) not in (0, 2, 3) or any(v < 0 for v in values):
            raise ValueError(f"synthetic source {source!r}: expected two or three non-negative numbers")
        return cls(*values) if values else cls()


class NetworkProfile(_Strict):
    """The WAN between the Gateway and a node. Injected on one machine; measured on a real cluster."""

    rtt_ms: float = Field(default=10.0, ge=0, le=60_000, description="round-trip time, ms")
    jitter_ms: float = Field(default=2.0, ge=0, le=60_000, description="std-dev of the RTT, ms")
    loss: float = Field(default=0.0, ge=0, lt=1, description="probability a request is dropped")


class ModelSpec(_Strict):
    """Which weights a node serves, and in what numeric format."""

    source: str = Field(
        default="smollm2",
        description="'tiny', 'smollm2', a local Hugging Face model directory, "
        "or 'synthetic:<prefill_ms>:<decode_ms>[:<slowdown>]'",
    )
    # bf16, not int8: torch's dynamic int8 flips SmolLM2's answers near ties (per tensor it got 2
    # of the 4 fact questions of eval/scores.py right, per channel every DP round lost 1-2 of 4),
    # so the gate's regression guard held every round; bf16 kept all 4 for the base and every
    # round, at 28 vs 50 tok/s batch 1 on 2 threads (docs/models-and-rollout.md#numeric-formats)
    quantization: Quantization = "bf16"
    threads: int = Field(default=1, ge=1, le=64, description="torch intra-op threads in the actor")

    adapter: Path | None = Field(default=None, description="a peft LoRA adapter directory, merged at load")

    @field_validator("source")
    @classmethod
    def _source_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model: 'tiny', 'smollm2' or a directory")
        if v.startswith("tiny:") and not v[5:].isdigit():
            raise ValueError(f"'tiny:<seed>' needs a whole-number seed, got {v!r}")
        if v == "synthetic" or v.startswith("synthetic:"):
            SyntheticProfile.parse(v)
        return v


class BatchingConfig(_Strict):
    """Dynamic batching: requests arriving together share one generate() call."""

    max_batch: int = Field(default=8, ge=1, le=256)
    quiet_ms: float = Field(default=1.0, ge=0, le=1000, description="start once no request came for this long")
    window_ms: float = Field(default=10.0, ge=0, le=10_000, description="never hold the first request longer")


class EdgeNodeConfig(_Strict):
    id: str = Field(pattern=NODE_ID_PATTERN)
    site: str = Field(default="", description="locality hint clients may send; defaults to the node id")
    labels: dict[str, str] = Field(default_factory=dict, description="extra Ray node labels")
    num_cpus: int = Field(default=2, ge=1, le=256, description="logical CPUs of the raylet (whole)")
    actor_cpus: float = Field(default=0.5, gt=0, description="CPU share of the EdgeNode actor")
    model: ModelSpec = Field(default_factory=ModelSpec)
    network: NetworkProfile = Field(default_factory=NetworkProfile)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    data_dir: Path | None = Field(default=None, description="this node's private training data")

    @model_validator(mode="after")
    def _check(self) -> EdgeNodeConfig:
        if self.actor_cpus > self.num_cpus:
            raise ValueError(f"actor_cpus={self.actor_cpus} exceeds num_cpus={self.num_cpus}")
        if any(k.startswith("edgefleet.io/") for k in self.labels):
            raise ValueError("labels under 'edgefleet.io/' are set by edgefleet itself")
        if self.id in ("eval", "held-out"):  # <cache>/data/<id> would be the evaluation sets' folder
            raise ValueError(f"node id {self.id!r} is reserved")
        if not self.site:
            object.__setattr__(self, "site", self.id)
        return self


def _default_edge_nodes() -> list[EdgeNodeConfig]:
    # Three sites at increasing distance from the Gateway: a realistic spread for the router.
    return [
        EdgeNodeConfig(id="edge-1", network=NetworkProfile(rtt_ms=5, jitter_ms=1)),
        EdgeNodeConfig(id="edge-2", network=NetworkProfile(rtt_ms=10, jitter_ms=2)),
        EdgeNodeConfig(id="edge-3", network=NetworkProfile(rtt_ms=20, jitter_ms=4)),
    ]


class CloudConfig(_Strict):
    id: str = Field(default="cloud", pattern=NODE_ID_PATTERN)
    num_cpus: int = Field(default=4, ge=1, le=1024)
    replica_cpus: float = Field(default=0.5, gt=0)
    replicas: int = Field(default=1, ge=1, le=64)
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(quantization="none", threads=2))
    network: NetworkProfile = Field(default_factory=lambda: NetworkProfile(rtt_ms=60, jitter_ms=8))
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    max_queued_requests: int = Field(default=64, ge=1, description="Serve refuses work beyond this queue")


class FleetConfig(_Strict):
    edge_nodes: list[EdgeNodeConfig] = Field(default_factory=_default_edge_nodes, min_length=1)
    cloud: CloudConfig = Field(default_factory=CloudConfig)

    @model_validator(mode="after")
    def _unique_ids(self) -> FleetConfig:
        ids = [n.id for n in self.edge_nodes] + [self.cloud.id]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"node ids must be unique, repeated: {', '.join(dupes)}")
        return self

    def edge(self, node_id: str) -> EdgeNodeConfig:
        for node in self.edge_nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"no edge node {node_id!r}; known: {[n.id for n in self.edge_nodes]}")


class RayConfig(_Strict):
    address: str | None = Field(default=None, description="join this cluster; None starts the embedded fleet")
    head_cpus: int = Field(default=2, ge=0)
    object_store_mb: int = Field(default=256, ge=75, description="per raylet; small on purpose on one machine")
    dashboard: bool = True


class RoutingConfig(_Strict):
    policy: Literal["sla", "least_loaded", "p2c", "round_robin", "edge_only", "cloud_only"] = "sla"
    cost_order: list[Tier] = Field(default_factory=lambda: ["site", "edge", "cloud"], min_length=1)
    default_deadline_ms: int = Field(default=5_000, gt=0)
    mode: Literal["best_effort", "strict"] = "best_effort"
    hedging: bool = True

    @field_validator("cost_order")
    @classmethod
    def _no_repeats(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"tiers must not repeat: {v}")
        return v


class PrivacyConfig(_Strict):
    target_epsilon: float | None = Field(default=8.0, gt=0, description="per round; solves the noise")
    noise_multiplier: float | None = Field(default=None, ge=0, description="set instead of target_epsilon")
    delta: float = Field(default=1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    accountant: Literal["rdp", "prv"] = "rdp"
    client_budget_epsilon: float = Field(default=30.0, gt=0, description="lifetime ε per client")

    @model_validator(mode="after")
    def _one_noise_source(self) -> PrivacyConfig:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("set exactly one of target_epsilon and noise_multiplier")
        return self


class UserDPConfig(_Strict):
    """User-level DP (DP-FedAvg): each client's whole update is clipped and the sum is noised."""

    clip_norm: float = Field(default=0.05, gt=0, description="L2 bound C of one client's adapter update")
    noise_multiplier: float = Field(default=1.0, gt=0, description="σ: noise std on the sum is σ·C")


# The aggregation rules (federation/strategies.py implements them, and its Strategy classes read
# their ``needs_each_update`` here): True for a rule that needs every client's update apart, which
# cannot run under secure aggregation (only the sum is revealed). Kept at this layer so the config
# checks that pairing without importing federation/.
STRATEGY_NEEDS_EACH_UPDATE: dict[str, bool] = {
    "fedavg": False,
    "fedprox": False,
    "fedadam": False,
    "fedyogi": False,
    "fedmedian": True,
    "trimmed_mean": True,
}
StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian", "trimmed_mean"]  # its keys


class FederationConfig(_Strict):
    rounds: int = Field(default=3, ge=1)
    clients_per_round: int = Field(default=3, ge=1)
    min_clients: int = Field(default=2, ge=1, description="a round needs at least this many finished clients")
    min_fraction: float = Field(default=0.6, gt=0, le=1, description="… and this fraction of those sampled")
    strategy: StrategyName = "fedavg"
    prox_mu: float = Field(default=0.1, ge=0, description="FedProx μ, used with strategy fedprox")
    server_lr: float = Field(default=1e-2, gt=0, description="server learning rate of fedadam / fedyogi")
    trim: float = Field(default=0.2, ge=0, lt=0.5, description="fraction cut at each end by trimmed_mean")
    round_timeout_s: float = Field(default=600.0, gt=0, description="clients not done by then are stragglers")
    secure_aggregation: bool = True
    user_dp: UserDPConfig | None = Field(default=None, description="add user-level DP on top of DP-SGD")
    local_steps: int = Field(default=6, ge=1, description="optimizer steps of each client's local update")
    batch_size: int = Field(default=8, ge=1, description="expected logical batch of the local update")
    block_size: int = Field(default=96, ge=8, le=4096, description="tokens per training sample (a chat exchange)")
    lr: float = Field(default=5e-3, gt=0, description="local learning rate")
    held_out_blocks: int = Field(default=32, ge=1, description="held-out samples the global model is scored on")
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> FederationConfig:
        if self.min_clients > self.clients_per_round:
            raise ValueError(f"min_clients={self.min_clients} exceeds clients_per_round={self.clients_per_round}")
        if self.secure_aggregation and STRATEGY_NEEDS_EACH_UPDATE[self.strategy]:
            raise ValueError(
                f"strategy {self.strategy} needs each client's update in the clear; "
                "it cannot run with secure_aggregation: true"
            )
        if self.user_dp is not None and STRATEGY_NEEDS_EACH_UPDATE[self.strategy]:
            raise ValueError(
                f"user_dp (DP-FedAvg) releases the noised mean of the clipped updates; strategy {self.strategy} "
                "would never see the updates it needs apart: use fedavg, fedprox, fedadam or fedyogi with user_dp"
            )
        return self


class MLflowConfig(_Strict):
    tracking_uri: str = Field(default="", description="empty: a SQLite store under the cache dir")
    model_name: str = Field(default="edgefleet-edge-llm", min_length=1, description="the registered model")
    promotion_margin: float = Field(
        default=0.0, ge=0, description="held-out loss a candidate must beat the champion's by to become champion"
    )
    task_margin: float = Field(
        default=0.0, ge=0, description="task score a candidate must beat the champion's (or the base's) by"
    )
    max_divergence: float = Field(
        default=0.05, gt=0, description="regression guard: mean KL per token from the base on general chat, at most"
    )
    canary_nodes: list[str] = Field(
        default_factory=list, description="edge nodes that take a new champion first; empty: the first edge node"
    )
    rollout_window_s: float = Field(default=30.0, gt=0, le=86_400, description="how long canaries are watched")

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        from urllib.parse import urlsplit

        # Credentials come from the environment only (MLFLOW_TRACKING_USERNAME / _PASSWORD or
        # MLFLOW_TRACKING_TOKEN, which MLflow reads itself): a URI is logged, shown by `status` and
        # stored in run tags. The message never repeats the URI, which holds a secret.
        parts = urlsplit(v)
        if parts.scheme in ("http", "https") and (parts.username or parts.password):
            raise ValueError(
                "tracking_uri must not hold credentials; set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment"
            )
        return v


class PortsConfig(_Strict):
    grpc: int = Field(default=9000, ge=1, le=65535)
    http: int = Field(default=8000, ge=1, le=65535)
    dashboard: int = Field(default=8265, ge=1, le=65535)
    mlflow_ui: int = Field(default=5000, ge=1, le=65535)
    metrics: int = Field(default=8080, ge=1, le=65535, description="the head's Prometheus metrics port (Ray's agent)")
    grpc_internal: int = Field(
        default=9001,
        ge=1,
        le=65535,
        description="Serve's own gRPC proxy, when the gRPC front (TLS, size limit) holds `grpc`",
    )
    dashboard_agent: int = Field(
        default=52365,
        ge=1,
        le=65535,
        description="the embedded fleet head's dashboard agent, which runs submitted Ray Jobs",
    )

    @model_validator(mode="after")
    def _distinct(self) -> PortsConfig:
        by_port: dict[int, list[str]] = {}
        for name in type(self).model_fields:
            by_port.setdefault(getattr(self, name), []).append(name)
        clashes = [f"{' and '.join(names)} are all {port}" for port, names in by_port.items() if len(names) > 1]
        if clashes:
            raise ValueError(f"ports must be distinct: {'; '.join(clashes)}")
        return self


class RateLimitConfig(_Strict):
    requests_per_s: float = Field(gt=0, description="sustained requests per second, per bearer token")
    burst: int = Field(default=10, ge=1, description="requests a token may send at once")


class AuthConfig(_Strict):
    tokens: list[str] = Field(
        default_factory=list,
        description="hashes ('sha256:<hex>', from `edgefleet auth hash`) of the accepted bearer tokens; empty = open",
    )
    rate_limit: RateLimitConfig | None = Field(default=None, description="per-token request rate; None = unlimited")
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @field_validator("tokens")
    @classmethod
    def _hashes_only(cls, v: list[str]) -> list[str]:
        from edgefleet.security import is_token_hash

        for i, entry in enumerate(v):
            if not is_token_hash(entry):  # never echo the entry: it may be a real token
                raise ValueError(
                    f"entry {i} is not a token hash ('sha256:<64 hex digits>'); store the output "
                    "of `edgefleet auth hash`, never the token itself"
                )
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> AuthConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


GRPC_DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # grpc's own default receive limit


class IngressConfig(_Strict):
    """The public listeners. gRPC: Serve's proxy takes plaintext only and messages up to 2 GiB; TLS
    (``auth.tls_cert``) or a size limit here puts edgefleet's gRPC front before it (serve/grpc_front.py).
    HTTP: how long an OpenAI request that names no max_tokens may run."""

    host: str = Field(default="127.0.0.1", min_length=1, description="where the front listens (0.0.0.0: all)")
    gateway_replicas: int = Field(
        default=1, ge=1, le=64, description="with 2 or more, a crashed Gateway replica costs a retry, not an outage"
    )
    max_request_bytes: int | None = Field(
        default=None,
        ge=1024,
        le=1024**3,
        description="refuse larger request bodies at the transport (RESOURCE_EXHAUSTED); None: 4 MiB with TLS, "
        "else Serve's 2 GiB and no front",
    )
    default_max_tokens_cap: int = Field(
        default=MAX_NEW_TOKENS_LIMIT,
        ge=1,
        le=MAX_NEW_TOKENS_LIMIT,  # the default must be a value a request could ask for itself
        description="OpenAI HTTP requests without max_tokens generate until the model's context is full, "
        "at most this many tokens (gRPC's max_new_tokens=0 keeps its fixed default of 128)",
    )


class FeedbackConfig(_Strict):
    """Users' ratings and corrections, kept on their own edge node (platform/feedback.py)."""

    keep_answers_s: float = Field(default=3600.0, gt=0, description="how long an answer waits for its feedback")
    max_answers: int = Field(default=10_000, ge=1, description="answers a node keeps for feedback, at most")
    max_answer_bytes: int = Field(default=64 << 20, ge=1024, description="… and their bytes, at most")
    max_correction_chars: int = Field(default=4000, ge=1, description="a longer correction is refused")
    retention_days: float = Field(default=30.0, gt=0, description="stored feedback older than this is deleted")
    max_rows: int = Field(default=100_000, ge=1, description="stored feedback per node, at most (oldest go first)")


class EdgefleetConfig(_Strict):
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    ports: PortsConfig = Field(default_factory=PortsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    app: str = Field(
        default="edgefleet",
        pattern=NODE_ID_PATTERN,
        description="Serve application: the gRPC `application` metadata, and the name scope of "
        "this deployment's actors (two apps can share one cluster)",
    )

    @property
    def grpc_front(self) -> bool:
        """Whether edgefleet's gRPC front holds the public port (TLS or a size limit asked for)."""
        return self.auth.tls_cert is not None or self.ingress.max_request_bytes is not None

    @property
    def max_request_bytes(self) -> int:
        return self.ingress.max_request_bytes or GRPC_DEFAULT_MAX_BYTES

    @model_validator(mode="after")
    def _fits_fleet(self) -> EdgefleetConfig:
        n_edge = len(self.fleet.edge_nodes)
        if self.federation.clients_per_round > n_edge:
            raise ValueError(
                f"federation.clients_per_round={self.federation.clients_per_round} exceeds the {n_edge} edge nodes"
            )
        return self

    @model_validator(mode="after")
    def _canaries_are_edge_nodes(self) -> EdgefleetConfig:
        ids = [n.id for n in self.fleet.edge_nodes]
        unknown = [c for c in self.mlflow.canary_nodes if c not in ids]
        if unknown:
            raise ValueError(f"mlflow.canary_nodes {unknown} are not edge nodes; known: {ids}")
        if self.mlflow.canary_nodes and len(set(self.mlflow.canary_nodes)) == len(ids):
            raise ValueError("mlflow.canary_nodes must leave at least one edge node to compare the canaries with")
        return self

    @property
    def tracking_uri(self) -> str:
        # the config's, else MLflow's own variable, else a SQLite store under the cache dir
        return (
            self.mlflow.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI", "")
            or f"sqlite:///{self.cache_dir / 'mlflow' / 'mlflow.db'}"
        )

    @property
    def registry_uri(self) -> str:
        # MLflow's own variable, else the tracking store (as MLflow defaults it)
        return os.environ.get("MLFLOW_REGISTRY_URI", "") or self.tracking_uri


def use_mlflow_uris(tracking_uri: str, registry_uri: str) -> None:
    """Point this process's MLflow at these stores (``models:/`` URIs resolve through MLflow's
    globals) without leaking them into the environment: ``mlflow.set_tracking_uri`` also writes
    ``MLFLOW_TRACKING_URI``, which :attr:`EdgefleetConfig.tracking_uri` reads as the user's choice,
    so a later config in this process, or any child process, would use another config's store."""
    import mlflow

    with _MLFLOW_URIS:  # threads (the reconciler renews its lease from one) must not interleave
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_MLFLOW_URIS = threading.Lock()


def _describe(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["loc"][:2] in (("auth", "tokens"), ("mlflow", "tracking_uri")):
        pass  # the value may be a credential: never repeat it
    elif err["type"] not in ("missing",) and "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return f"{where}: {msg}"


def parse_config(data: Any, *, source: str = "config") -> EdgefleetConfig:
    """Validate an already-parsed mapping; errors name each bad field, one per line."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return EdgefleetConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{source}: invalid configuration\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path | None = None, *, ray_address: str | None = None) -> EdgefleetConfig:
    """Load and validate a YAML config; ``None`` gives the embedded-fleet defaults.

    ``ray_address`` (the CLI's ``--address``) overrides ``ray.address``: join that cluster.

    Raises:
        ConfigError: the file is missing, is not YAML, or a field is invalid (the message names it).
    """
    cfg = _read_config(path)
    if ray_address:
        cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": ray_address})})
    return cfg


def _read_config(path: str | Path | None) -> EdgefleetConfig:
    if path is None:
        return EdgefleetConfig()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where} not valid YAML ({problem})") from None
    return parse_config(data, source=str(path))
