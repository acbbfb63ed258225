"""The embedded fleet is a real multi-raylet Ray cluster, and placement by label really lands."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from edgefleet.platform.edge_node import ACTOR_NAMESPACE, spawn_edge_node  # noqa: E402
from edgefleet.platform.topology import NODE_LABEL, ROLE_LABEL, node_selector  # noqa: E402
from tests.conftest import call_until_back  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@ray.remote(num_cpus=0.1)
class WhereAmI:
    def where(self) -> tuple[str, dict]:
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), dict(ctx.get_node_labels())


def test_one_raylet_per_node_with_labels(fleet, fleet_config):
    nodes = fleet.nodes()

    edge = [n for n in nodes if n.role == "edge"]
    assert [n.node_id for n in edge] == [n.id for n in fleet_config.fleet.edge_nodes]
    assert [n.node_id for n in nodes if n.role == "cloud"] == ["cloud"]
    assert len({n.ray_node_id for n in nodes}) == len(nodes) == len(edge) + 2  # + cloud + head
    assert all(n.alive for n in nodes)


def test_actor_with_edge_1_selector_runs_on_the_edge_1_raylet(fleet):
    raylet_of = {n.node_id: n.ray_node_id for n in fleet.nodes()}

    actor = WhereAmI.options(label_selector=node_selector("edge-1")).remote()
    ray_node_id, labels = ray.get(actor.where.remote(), timeout=60)

    assert labels[NODE_LABEL] == "edge-1" and labels[ROLE_LABEL] == "edge"
    assert ray_node_id == raylet_of["edge-1"]
    ray.kill(actor)


def test_placement_follows_the_label_for_every_node(fleet):
    raylet_of = {n.node_id: n.ray_node_id for n in fleet.nodes() if n.role in ("edge", "cloud")}

    actors = {nid: WhereAmI.options(label_selector=node_selector(nid)).remote() for nid in raylet_of}
    landed = {nid: ray.get(a.where.remote(), timeout=60)[0] for nid, a in actors.items()}

    assert landed == raylet_of
    for a in actors.values():
        ray.kill(a)


def test_edge_node_actor_serves_its_model_and_comes_back_after_a_crash(fleet, fleet_config):
    node = fleet_config.fleet.edge("edge-2")
    actor = spawn_edge_node(node, cache_dir=fleet_config.cache_dir, name="restart-test")  # not the served one

    info = ray.get(actor.info.remote(), timeout=120)
    before = ray.get(actor.generate.remote("hello", max_new_tokens=5), timeout=60)
    ray.kill(actor, no_restart=False)  # simulate a crash: Ray restarts it (max_restarts), model reloads
    after = call_until_back(lambda: actor.generate.remote("hello", max_new_tokens=5))

    assert info.node_labels[NODE_LABEL] == "edge-2"
    assert (info.model, info.quantization) == ("tiny", "none")
    assert before.node_id == after.node_id == "edge-2"
    assert before.text == after.text  # same seeded weights after the restart
    assert ray.get_actor("restart-test", namespace=ACTOR_NAMESPACE)
    ray.kill(actor)
