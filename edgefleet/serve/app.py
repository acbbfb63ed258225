"""Put the request path on a fleet: EdgeNode actors, the Cloud deployment and the Gateway.

Example:
    >>> fleet = start_local_fleet(cfg)          # doctest: +SKIP
    >>> deploy(cfg)                              # doctest: +SKIP
    >>> Client(f"127.0.0.1:{cfg.ports.grpc}").generate("hi").text  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.serve.config import HTTPOptions, gRPCOptions

from edgefleet.config import EdgefleetConfig
from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name, node_info, spawn_edge_node
from edgefleet.platform.topology import head_placement
from edgefleet.serve.cloud import cloud_deployment
from edgefleet.serve.convergence import served_version
from edgefleet.serve.gateway import Gateway

APP_NAME = "edgefleet"  # the default app: also the `application` gRPC metadata the SDK sends
GRPC_SERVICER = "edgefleet.serve.grpc_api.add_inference_servicer"  # tolerant decoding: see grpc_api


@dataclass
class Deployment:
    # The EdgeNode actors are owned by this process: they live while these handles do, so keep
    # the Deployment for as long as the fleet should serve.
    edge_actors: dict[str, Any]
    grpc_address: str
    http_url: str
    front: Any = None  # the GrpcFront actor, when TLS or a size limit is configured


def start_serve(cfg: EdgefleetConfig, *, log_level: str = "INFO") -> None:
    """Start Serve's proxies on loopback with the InferenceService registered on the gRPC proxy.

    On the embedded fleet there is one proxy, on the head: every raylet shares this machine's
    ports, and a proxy on an edge raylet would go down with that edge node.
    """
    location = "HeadOnly" if cfg.ray.address is None else "EveryNode"
    serve.start(
        proxy_location=location,
        http_options=HTTPOptions(host="127.0.0.1", port=cfg.ports.http),
        # Behind the gRPC front (TLS, size limit), Serve's proxy moves to the internal port.
        grpc_options=gRPCOptions(
            port=cfg.ports.grpc_internal if cfg.grpc_front else cfg.ports.grpc, grpc_servicer_functions=[GRPC_SERVICER]
        ),
        logging_config={"log_level": log_level},
    )


def _gateway_app(cfg: EdgefleetConfig, *, log_level: str = "INFO") -> Any:
    """The Cloud + Gateway application, unbound to any name (``serve.run`` or a Serve config names it)."""
    # The Gateway belongs with the head (or a node labelled like it), never on an edge node whose
    # loss would take every request down with it.
    placement = head_placement(ray.nodes())
    actor_options = {"ray_actor_options": {"num_cpus": 0.1, **placement}} if placement else {}
    gateway_app = Gateway.options(num_replicas=cfg.ingress.gateway_replicas, **actor_options)
    # auth.tokens holds digests only, so the config can travel as Serve's deployment arguments.
    cloud = cloud_deployment(cfg.fleet.cloud, cache_dir=cfg.cache_dir, log_level=log_level)
    return gateway_app.bind(cfg.model_dump(mode="python"), cloud)


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder: what a Serve config's ``import_path: edgefleet.serve.app:build_app``
    runs (KubeRay's RayService, ``serve deploy``). ``args``: ``{"config": "<fleet YAML>"}``.

    With no driver of ours to own them, the EdgeNode actors are detached; see
    :func:`reconcile_edge_actors` for what a redeploy does to them.
    """
    from edgefleet.config import load_config

    unknown = set(args) - {"config"}
    if unknown:
        raise ValueError(f"build_app takes only a 'config' argument, got {sorted(unknown)}")
    cfg = load_config(args.get("config"))
    reconcile_edge_actors(cfg)
    return _gateway_app(cfg)


def reconcile_edge_actors(cfg: EdgefleetConfig, *, timeout_s: float = 600) -> dict[str, str]:
    """Make the detached EdgeNode actors match ``cfg``; returns node id → what happened to it.

    A node new to the config gets an actor; one dropped from it loses its actor; one whose model
    changed swaps to the new model live (running requests finish on the old one). A node serving
    the configured base with a registry version's adapter keeps it: which version each node serves
    is the champion reconciler's (:mod:`edgefleet.serve.reconciler`), which also brings a new or
    restarted node onto the champion. Batching and CPU share are fixed at actor start: changing
    them needs ``ray.kill`` of that node's actor first.
    Nodes not ready within ``timeout_s`` (a site that never joined) are left out, not waited for:
    the Gateway routes around them until they answer.
    """
    import logging

    log = logging.getLogger(__name__)
    wanted = {n.id: n for n in cfg.fleet.edge_nodes}
    prefix = actor_name("", cfg.app)
    outcome: dict[str, str] = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        node_id = entry["name"].removeprefix(prefix)
        if entry["namespace"] == ACTOR_NAMESPACE and entry["name"].startswith(prefix) and node_id not in wanted:
            ray.kill(ray.get_actor(entry["name"], namespace=ACTOR_NAMESPACE))
            outcome[node_id] = "removed"
    actors = {
        i: spawn_edge_node(n, cache_dir=cfg.cache_dir, app=cfg.app, detached=True, feedback=cfg.feedback)
        for i, n in wanted.items()
    }
    refs = {actors[i].info.remote(): i for i in wanted}
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in late:
        outcome[refs[ref]] = "not ready"
        log.warning("edge node %s not ready after %.0f s: deploying without it", refs[ref], timeout_s)
    swaps = {}
    for ref in ready:
        node_id, info = refs[ref], node_info(ray.get(ref))
        configured, running = wanted[node_id].model, info.spec
        # A registry version on top of the configured base is the champion reconciler's doing: it
        # stays, over the base as now configured (a new format, say). Any other difference (the
        # adapter named in the config too) is a change to apply.
        if (served_version(info.model_version, cfg.mlflow.model_name) or "").isdigit():
            configured = configured.model_copy(update={"adapter": running.adapter})
        if running != configured:
            swaps[node_id] = actors[node_id].swap_model.remote(configured)
        outcome[node_id] = "swapped" if node_id in swaps else "serving"
    ray.get(list(swaps.values()))
    return outcome


def deploy(cfg: EdgefleetConfig, *, timeout_s: float = 600, log_level: str = "INFO") -> Deployment:
    """Spawn an EdgeNode per edge node, then run the Cloud + Gateway app; returns when all serve.

    ``log_level="WARNING"`` keeps Serve's per-request access log out of a scripted demo's output.
    """
    start_serve(cfg, log_level=log_level)
    actors = {
        n.id: spawn_edge_node(n, cache_dir=cfg.cache_dir, app=cfg.app, feedback=cfg.feedback)
        for n in cfg.fleet.edge_nodes
    }
    ray.get([a.info.remote() for a in actors.values()], timeout=timeout_s)  # models loaded
    gateway = _gateway_app(cfg, log_level=log_level)
    prefix = "/" if cfg.app == APP_NAME else f"/{cfg.app}"  # HTTP: the default app owns /v1
    serve.run(gateway, name=cfg.app, route_prefix=prefix, blocking=False, logging_config={"log_level": log_level})
    _wait_running(cfg.app, timeout_s)
    http = f"http://127.0.0.1:{cfg.ports.http}" + ("" if prefix == "/" else prefix)
    front = None
    if cfg.grpc_front:
        from edgefleet.serve.grpc_front import spawn_front

        front = spawn_front(cfg)
    host = "127.0.0.1" if not cfg.grpc_front or cfg.ingress.host in ("0.0.0.0", "[::]") else cfg.ingress.host
    return Deployment(actors, f"{host}:{cfg.ports.grpc}", http, front)


def _wait_running(app: str, timeout_s: float) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        if status and status.status == "RUNNING":
            return
        if status and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"edgefleet app failed to deploy: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(f"edgefleet app not running after {timeout_s}s")
