"""The Ray cluster edgefleet runs on: the embedded one-machine fleet, or an existing cluster.

``start_local_fleet`` starts a *real* multi-node Ray cluster on this machine: a head plus one raylet
per edge node and one for the cloud, each a separate process tree with its own object store and
the labels from :mod:`topology`. Nodes declare whole logical CPUs (Ray requires it) and actors ask
for fractions of them, so the whole fleet fits on 2 physical cores.

Example:
    >>> from edgefleet.config import EdgefleetConfig
    >>> with start_local_fleet(EdgefleetConfig()) as fleet:   # doctest: +SKIP
    ...     print([n.node_id for n in fleet.nodes()])
    ['edge-1', 'edge-2', 'edge-3', 'cloud', 'head']
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edgefleet.config import EdgefleetConfig
from edgefleet.errors import FleetError
from edgefleet.platform.topology import ROLE_LABEL, FleetNode, cloud_labels, describe_nodes, edge_labels

Step = Callable[[str], None]
_MB = 1024 * 1024


@dataclass
class Fleet:
    """A connection to the cluster, and, when embedded, ownership of its processes."""

    address: str  # GCS address, what `ray.init(address=...)` and `ray start --address` take
    dashboard_url: str | None
    embedded: bool
    _cluster: Any = field(default=None, repr=False)  # ray.cluster_utils.Cluster when embedded

    def nodes(self) -> list[FleetNode]:
        import ray

        return describe_nodes(ray.nodes())

    def raylet_pids(self) -> list[int]:
        """PIDs of the raylets this process started (empty when joined to an existing cluster)."""
        if self._cluster is None:
            return []
        nodes = [self._cluster.head_node, *self._cluster.worker_nodes]
        return [p.process.pid for n in nodes if n for p in n.all_processes.get("raylet", [])]

    def shutdown(self) -> None:
        """Disconnect; for an embedded fleet, also stop every raylet, GCS and worker it started."""
        import ray

        ray.shutdown()
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _quiet_ray_env() -> None:
    # Usage stats would try to phone home (no internet here); worker processes inherit these.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's "accelerator env var override" FutureWarning is noise on a CPU-only fleet.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@contextlib.contextmanager
def _raylet_env() -> Iterator[None]:
    """What the embedded raylets, and so their workers, are started with; this process keeps its own.

    On one machine no node is preempted, and Ray Train's preemption watcher is one more process
    (~3 s of CPU to start) per training session: each federated client has one. Set for the raylets
    only: Ray Train copies a variable it finds in the driver's environment into every Train worker's
    runtime env, and a worker with a runtime env of its own cannot be a prestarted one."""
    settings = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update({k: v for k, v in settings.items() if saved[k] is None})  # the user's setting wins
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def start_local_fleet(config: EdgefleetConfig, *, on_step: Step | None = None, log_to_driver: bool = True) -> Fleet:
    """Start the embedded fleet described by ``config.fleet`` and connect this process to it.

    Raises:
        FleetError: Ray is already initialised in this process, or a node failed to start.
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        raise FleetError("Ray is already initialised in this process; call Fleet.shutdown() first")
    _quiet_ray_env()
    step = on_step or (lambda _name: None)
    store = config.ray.object_store_mb * _MB
    head_args: dict[str, Any] = {
        "num_cpus": config.ray.head_cpus,
        "object_store_memory": store,
        "include_dashboard": config.ray.dashboard,
        "labels": {ROLE_LABEL: "head"},
        # The head's metrics on a known port; the other raylets pick free ones,
        # found through ray.nodes() (see edgefleet.metrics.endpoints).
        "metrics_export_port": config.ports.metrics,
        "dashboard_agent_listen_port": config.ports.dashboard_agent,
    }
    if config.ray.dashboard:
        head_args |= {"dashboard_host": "127.0.0.1", "dashboard_port": config.ports.dashboard}
    step("start head (GCS" + (" + dashboard)" if config.ray.dashboard else ")"))
    cluster = None
    try:
        with _raylet_env():
            cluster = Cluster(initialize_head=True, head_node_args=head_args)
            for node in config.fleet.edge_nodes:
                step(f"start raylet {node.id} (edge, {node.num_cpus} CPU)")
                cluster.add_node(
                    num_cpus=node.num_cpus,
                    object_store_memory=store,
                    labels=edge_labels(node.id, node.labels),
                    wait=False,
                )
            cloud = config.fleet.cloud
            step(f"start raylet {cloud.id} (cloud, {cloud.num_cpus} CPU)")
            cluster.add_node(
                num_cpus=cloud.num_cpus, object_store_memory=store, labels=cloud_labels(cloud.id), wait=False
            )
        step("wait for all raylets to register")
        cluster.wait_for_nodes(timeout=120)
        ray.init(address=cluster.address, log_to_driver=log_to_driver, logging_level="WARNING")
    except BaseException as exc:  # Ctrl-C while it starts too: never leave half a fleet running
        if cluster is not None:
            try:
                cluster.shutdown()
            except Exception:
                pass
        if not isinstance(exc, Exception):
            raise
        raise FleetError(f"embedded fleet failed to start: {exc}") from exc
    dashboard = f"http://{cluster.webui_url}" if config.ray.dashboard and cluster.webui_url else None
    return Fleet(address=cluster.address, dashboard_url=dashboard, embedded=True, _cluster=cluster)


def connect(address: str, *, log_to_driver: bool = True) -> Fleet:
    """Join an existing Ray cluster (KubeRay, or hosts started with ``ray start --labels``).

    Raises:
        FleetError: the cluster cannot be reached, or none of its nodes carries edgefleet labels.
    """
    import ray

    _quiet_ray_env()
    try:
        ctx = ray.init(address=address, log_to_driver=log_to_driver, logging_level="WARNING")
    except Exception as exc:
        raise FleetError(f"cannot connect to Ray at {address!r}: {exc}") from exc
    nodes = describe_nodes(ray.nodes())
    if not any(n.role in ("edge", "cloud") for n in nodes):
        ray.shutdown()
        raise FleetError(
            f"the cluster at {address!r} has no node labelled edgefleet.io/role=edge or cloud; "
            'start workers with ray start --labels=\'{"edgefleet.io/role": "edge", "edgefleet.io/node": "<id>"}\''
        )
    dashboard = getattr(ctx, "dashboard_url", None)
    return Fleet(address=address, dashboard_url=f"http://{dashboard}" if dashboard else None, embedded=False)
