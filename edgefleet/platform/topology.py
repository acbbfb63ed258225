"""What exists where: the node labels edgefleet places work by, and the live node list.

Placement always goes through these labels, never through Ray node IDs, so the same code places
work on the embedded fleet, on KubeRay worker groups, or on hosts started with
``ray start --labels='{"edgefleet.io/role": "edge", "edgefleet.io/node": "edge-1"}'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ROLE_LABEL = "edgefleet.io/role"
NODE_LABEL = "edgefleet.io/node"
Role = Literal["edge", "cloud", "head"]


def edge_labels(node_id: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**(extra or {}), ROLE_LABEL: "edge", NODE_LABEL: node_id}


def cloud_labels(node_id: str) -> dict[str, str]:
    return {ROLE_LABEL: "cloud", NODE_LABEL: node_id}


def node_selector(node_id: str) -> dict[str, str]:
    """Ray ``label_selector`` that pins an actor, task or Train worker to one edgefleet node."""
    return {NODE_LABEL: node_id}


def role_selector(role: Role) -> dict[str, str]:
    """Ray ``label_selector`` for any node of a role (e.g. every cloud node)."""
    return {ROLE_LABEL: role}


def head_placement(ray_nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Actor options that keep a front-door component (Gateway, gRPC front) on the head, or a node
    labelled like it, so the loss of an edge node never takes every request down; ``{}`` when no
    live node is labelled head (a cluster started without edgefleet labels on its head)."""
    if any((n.get("Labels") or {}).get(ROLE_LABEL) == "head" for n in ray_nodes if n.get("Alive")):
        return {"label_selector": role_selector("head")}
    return {}


@dataclass(frozen=True)
class FleetNode:
    """One Ray node as edgefleet sees it."""

    node_id: str  # edgefleet id (the NODE_LABEL value), or "head"
    role: str
    alive: bool
    cpus: float  # logical CPUs the raylet offers
    address: str  # IP of the raylet
    ray_node_id: str  # for display and debugging only: never used for placement
    labels: dict[str, str] = field(default_factory=dict)


def describe_nodes(ray_nodes: list[dict[str, Any]]) -> list[FleetNode]:
    """Turn ``ray.nodes()`` output into FleetNodes: edge first, then cloud, then the rest; by id."""
    out = []
    for n in ray_nodes:
        labels = {k: v for k, v in (n.get("Labels") or {}).items() if not k.startswith("ray.io/")}
        is_head = "node:__internal_head__" in n.get("Resources", {})
        role = labels.get(ROLE_LABEL, "head" if is_head else "other")
        labels = {k: v for k, v in labels.items() if not (k == ROLE_LABEL and v == "head")}  # shown as the role
        out.append(
            FleetNode(
                node_id=labels.get(NODE_LABEL, "head" if is_head else n["NodeID"][:8]),
                role=role,
                alive=bool(n.get("Alive")),
                cpus=float(n.get("Resources", {}).get("CPU", 0.0)),
                address=n.get("NodeManagerAddress", ""),
                ray_node_id=n["NodeID"],
                labels=labels,
            )
        )
    order = {"edge": 0, "cloud": 1, "head": 2}
    return sorted(out, key=lambda f: (order.get(f.role, 3), f.node_id, not f.alive))
