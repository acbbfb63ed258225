"""Labels and node listing are plain data: checked without a cluster."""

from edgefleet.platform.topology import (
    NODE_LABEL,
    ROLE_LABEL,
    describe_nodes,
    edge_labels,
    node_selector,
    role_selector,
)


def _ray_node(node_id: str, labels: dict, head: bool = False, alive: bool = True) -> dict:
    resources = {"CPU": 2.0, **({"node:__internal_head__": 1.0} if head else {})}
    return {
        "NodeID": node_id,
        "Alive": alive,
        "NodeManagerAddress": "10.0.0.1",
        "Resources": resources,
        "Labels": {"ray.io/node-id": node_id, **labels},
    }


def test_edge_labels_cannot_be_overridden_by_extras():
    labels = edge_labels("edge-1", {ROLE_LABEL: "cloud", "zone": "north"})

    assert labels == {ROLE_LABEL: "edge", NODE_LABEL: "edge-1", "zone": "north"}


def test_selectors_use_labels_only():
    assert node_selector("edge-2") == {NODE_LABEL: "edge-2"}
    assert role_selector("cloud") == {ROLE_LABEL: "cloud"}


def test_describe_nodes_orders_edge_cloud_head_and_hides_ray_labels():
    raw = [
        _ray_node("h" * 40, {}, head=True),
        _ray_node("c" * 40, {ROLE_LABEL: "cloud", NODE_LABEL: "cloud"}),
        _ray_node("b" * 40, edge_labels("edge-2")),
        _ray_node("a" * 40, edge_labels("edge-1"), alive=False),
    ]

    nodes = describe_nodes(raw)

    assert [(n.node_id, n.role) for n in nodes] == [
        ("edge-1", "edge"),
        ("edge-2", "edge"),
        ("cloud", "cloud"),
        ("head", "head"),
    ]
    assert nodes[0].alive is False
    assert all(not k.startswith("ray.io/") for n in nodes for k in n.labels)
