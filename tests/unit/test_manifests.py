"""Kubernetes manifests (infra/): they parse, and agree with the code they deploy.

Pure: no cluster, no network. The code's constants (node labels, ports, the Serve app's name and
servicer) and the fleet config in the ConfigMap are the truth; each test checks one place where a
manifest repeats one of them, so a rename on either side fails here instead of in a cluster.
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from edgefleet.config import EdgefleetConfig, PortsConfig, parse_config
from edgefleet.platform.topology import NODE_LABEL, ROLE_LABEL, cloud_labels, edge_labels
from edgefleet.serve.app import APP_NAME, GRPC_SERVICER

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
MONITORING = KUBERAY / "monitoring"
MLFLOW = INFRA / "mlflow"
YAML_FILES = sorted(p for ext in ("yaml", "yml") for p in INFRA.rglob(f"*.{ext}"))
# Kubernetes manifests: the YAML of a kustomize folder (infra/ also holds e.g. a Prometheus config).
FOLDERS = sorted(p.parent for p in INFRA.rglob("kustomization.yaml"))
MANIFESTS = [p for p in YAML_FILES if p.parent in FOLDERS]
ROLES = {"head", "edge", "cloud"}


# ---------------------------------------------------------------- loading


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@cache
def load(path: Path) -> tuple[dict[str, Any], ...]:
    """Every non-empty document of a multi-document YAML file."""
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as exc:
        problem = str(exc)
    else:
        return tuple(d for d in docs if d is not None)
    pytest.fail(f"{rel(path)} is not valid YAML: {problem}", pytrace=False)


def docs_in(folder: Path) -> list[dict[str, Any]]:
    return [d for p in sorted(folder.glob("*.yaml")) if p.name != "kustomization.yaml" for d in load(p)]


def find(folder: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs_in(folder) if d.get("kind") == kind and name in (None, d["metadata"]["name"])]
    assert len(hits) == 1, f"expected one {kind} {name or ''} in {rel(folder)}, found {len(hits)}"
    return hits[0]


# ---------------------------------------------------------------- RayService views


def rayservice() -> dict[str, Any]:
    return find(KUBERAY, "RayService")


def groups() -> dict[str, dict[str, Any]]:
    """The head ('head') and each worker group by groupName."""
    cluster = rayservice()["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def ray_labels(group: dict[str, Any]) -> dict[str, str]:
    """The Ray node labels a group starts with: KubeRay's top-level `labels` field."""
    return dict(group.get("labels") or {})


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]  # KubeRay: the Ray container comes first


def container_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def cpu_limit(container: dict[str, Any]) -> float:
    """Ray's logical CPUs on KubeRay: the container's CPU limit."""
    q = str(container["resources"]["limits"]["cpu"])
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def fleet() -> EdgefleetConfig:
    text = find(KUBERAY, "ConfigMap", "edgefleet-fleet")["data"]["fleet.yaml"]
    return parse_config(yaml.safe_load(text), source="fleet-configmap.yaml:fleet.yaml")


def serve_config() -> dict[str, Any]:
    return yaml.safe_load(rayservice()["spec"]["serveConfigV2"])


def the_app() -> dict[str, Any]:
    apps = serve_config()["applications"]
    assert len(apps) == 1, f"expected the one edgefleet app, got {[a.get('name') for a in apps]}"
    return apps[0]


# ---------------------------------------------------------------- Kubernetes views


def pod_templates(folder: Path) -> list[tuple[str, dict[str, str], list[dict[str, Any]]]]:
    """(what, pod labels, containers) for every pod template in a folder.

    Ray pods also get the labels KubeRay sets: ray.io/node-type and ray.io/group, and ray.io/serve
    "true" where a Serve proxy runs (head only under proxy_location HeadOnly).
    """
    out = []
    for doc in docs_in(folder):
        if doc.get("kind") in ("Deployment", "StatefulSet", "Job"):
            t = doc["spec"]["template"]
            out.append(
                (f"{doc['kind']}/{doc['metadata']['name']}", t["metadata"].get("labels", {}), t["spec"]["containers"])
            )
        elif doc.get("kind") == "RayService":
            every_node = serve_config().get("proxy_location", "EveryNode") == "EveryNode"
            for name, g in groups().items():
                is_head = name == "head"
                kuberay = {
                    "ray.io/node-type": "head" if is_head else "worker",
                    "ray.io/group": "headgroup" if is_head else name,
                    "ray.io/serve": "true" if is_head or every_node else "false",
                    # A RayService names its RayCluster <name>-<random suffix>, new at each upgrade.
                    "ray.io/cluster": f"{doc['metadata']['name']}-x7k2p",
                    "ray.io/is-ray-node": "yes",
                }
                labels = {**g["template"]["metadata"].get("labels", {}), **kuberay}
                out.append((f"RayService group {name}", labels, g["template"]["spec"]["containers"]))
    return out


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == str(v) for k, v in selector.items())


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions) against a pod's labels."""
    ops = {
        "In": lambda k, vs: labels.get(k) in vs,
        "NotIn": lambda k, vs: labels.get(k) not in vs,
        "Exists": lambda k, vs: k in labels,
        "DoesNotExist": lambda k, vs: k not in labels,
    }
    return matches(selector.get("matchLabels", {}), labels) and all(
        ops[e["operator"]](e["key"], [str(v) for v in e.get("values", [])])
        for e in selector.get("matchExpressions", [])
    )


def images_in(node: Any) -> list[str]:
    """Every `image:` value anywhere in a parsed document (Pods, workloads, custom resources)."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            i for k, v in node.items() if k != "image" for i in images_in(v)
        ]
    if isinstance(node, list):
        return [i for v in node for i in images_in(v)]
    return []


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None when it has none: Kubernetes then pulls :latest)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def cli_option(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def service_port(folder: Path, service: str, port_name: str | None = None) -> int:
    ports = find(folder, "Service", service)["spec"]["ports"]
    if port_name:
        ports = [p for p in ports if p["name"] == port_name]
    assert len(ports) == 1, f"Service {service}: expected one port {port_name or ''}, got {ports}"
    return ports[0]["port"]


def mlflow_container() -> dict[str, Any]:
    return find(MLFLOW, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]


def mlflow_args() -> list[str]:
    return [str(a) for a in mlflow_container()["args"]]


# ---------------------------------------------------------------- every file


def test_infra_has_manifests():
    assert KUBERAY / "rayservice.yaml" in MANIFESTS and MLFLOW / "mlflow.yaml" in MANIFESTS


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_file_parses(path):
    assert load(path), f"{rel(path)} has no documents"


@pytest.mark.parametrize("path", MANIFESTS, ids=rel)
def test_manifest_holds_kubernetes_objects(path):
    for doc in load(path):
        assert isinstance(doc, dict) and {"apiVersion", "kind"} <= doc.keys(), (
            f"{rel(path)}: a document without apiVersion/kind: {str(doc)[:80]}"
        )


@pytest.mark.parametrize("folder", FOLDERS, ids=rel)
def test_kustomization_lists_every_manifest_of_its_folder(folder):
    (kustomization,) = load(folder / "kustomization.yaml")
    manifests = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}

    assert set(kustomization["resources"]) == manifests


def test_every_kustomization_shares_a_namespace():
    # fleet.yaml reaches MLflow by its short Service name, which resolves only in the same namespace;
    # a PodMonitor without a namespaceSelector only sees pods of its own namespace.
    assert {KUBERAY, MLFLOW, MONITORING} <= set(FOLDERS)
    namespaces = {load(f / "kustomization.yaml")[0].get("namespace") for f in FOLDERS}

    assert len(namespaces) == 1 and None not in namespaces, namespaces


# ---------------------------------------------------------------- images


def test_images_are_pinned_never_latest():
    """A `:latest` (or untagged) image says nothing about what runs, and changes under a running pod."""
    images = {(rel(p), i) for p in MANIFESTS for d in load(p) for i in images_in(d)}
    assert any("ghcr.io/edgefleet/edgefleet" in i for _, i in images), "the RayService's image was not found"
    for where, image in images:
        assert image_tag(image) not in (None, "latest") or "@sha256:" in image, f"{where}: {image} is not pinned"
    for folder in FOLDERS:
        for entry in load(folder / "kustomization.yaml")[0].get("images", []):
            assert entry.get("newTag", "") != "latest" and (entry.get("newTag") or entry.get("digest")), entry
    for dockerfile in INFRA.rglob("Dockerfile"):
        text = dockerfile.read_text()
        refs = re.findall(r"^FROM\s+(\S+)", text, re.M) + re.findall(r"^ARG\s+\w*IMAGE\w*=(\S+)", text, re.M)
        for ref in (r for r in refs if not r.startswith("$")):
            assert image_tag(ref) not in (None, "latest"), f"{rel(dockerfile)}: FROM {ref} is not pinned"
        assert ":latest" not in text, f"{rel(dockerfile)} mentions a :latest tag"


def test_the_edgefleet_image_tag_is_set_in_the_kustomization_and_is_this_release():
    import tomllib

    (kustomization,) = load(KUBERAY / "kustomization.yaml")
    entries = {e["name"]: e for e in kustomization.get("images", [])}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, group in groups().items():
        image = ray_container(group)["image"]
        repo = image.rsplit(":", 1)[0]
        assert repo in entries, f"group {name}: {repo} has no `images:` entry, so its tag cannot be set"
        # The manifest says what kustomize will deploy: a reader of rayservice.yaml is not misled.
        assert image_tag(image) == entries[repo]["newTag"], f"group {name}: {image}"
    assert entries["ghcr.io/edgefleet/edgefleet"]["newTag"] == version, "the pinned image is not this release"


# ---------------------------------------------------------------- PodMonitors (Prometheus Operator)


def pod_monitors() -> list[dict[str, Any]]:
    return [d for folder in FOLDERS for d in docs_in(folder) if d.get("kind") == "PodMonitor"]


def ray_pods() -> list[tuple[str, dict[str, str], list[dict[str, Any]]]]:
    return [t for t in pod_templates(KUBERAY) if t[0].startswith("RayService")]


def test_pod_monitors_are_shipped_for_the_head_and_the_workers():
    monitors = pod_monitors()
    assert {m["apiVersion"] for m in monitors} == {"monitoring.coreos.com/v1"}
    types = sorted(m["spec"]["selector"]["matchLabels"].get("ray.io/node-type") for m in monitors)
    assert types == ["head", "worker"], types


def test_every_ray_pod_is_scraped_by_exactly_one_pod_monitor():
    for what, labels, _ in ray_pods():
        hits = [m["metadata"]["name"] for m in pod_monitors() if selects(m["spec"]["selector"], labels)]
        assert len(hits) == 1, f"{what} is scraped by {hits or 'no PodMonitor'}"


def test_pod_monitors_select_kuberay_pods_by_label_not_by_a_cluster_name():
    for m in pod_monitors():
        spec = m["spec"]
        assert "namespaceSelector" not in spec, "the pods are in the PodMonitor's own namespace"
        # ray.io/cluster is edgefleet-<random> under a RayService: its value cannot be written down here.
        assert {"key": "ray.io/cluster", "operator": "Exists"} in spec["selector"].get("matchExpressions", [])
        assert "ray.io/cluster" not in spec["selector"]["matchLabels"], m["metadata"]["name"]
        assert not any(selects(spec["selector"], labels) for _, labels, _ in pod_templates(MLFLOW))


def test_every_pod_monitor_port_is_declared_by_the_pods_it_selects():
    for m in pod_monitors():
        selected = [
            (what, containers) for what, labels, containers in ray_pods() if selects(m["spec"]["selector"], labels)
        ]
        assert selected, f"PodMonitor {m['metadata']['name']} selects no pod"
        for endpoint in m["spec"]["podMetricsEndpoints"]:
            assert "port" in endpoint, f"{m['metadata']['name']}: scrape a named port, not a number"
            for what, containers in selected:
                names = {p.get("name") for c in containers for p in c.get("ports", [])}
                assert endpoint["port"] in names, (
                    f"{m['metadata']['name']} scrapes {endpoint['port']!r}: {what} has {names}"
                )


def test_every_scrape_keeps_the_ray_cluster_label_ray_dashboards_filter_on():
    relabel = {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
        "targetLabel": "ray_io_cluster",
    }
    for m in pod_monitors():
        for endpoint in m["spec"]["podMetricsEndpoints"]:
            assert relabel in endpoint.get("relabelings", []), f"{m['metadata']['name']}: {endpoint['port']}"


def test_the_metrics_port_of_every_ray_pod_is_scraped():
    for what, labels, _ in ray_pods():
        scraped = {
            e["port"]
            for m in pod_monitors()
            if selects(m["spec"]["selector"], labels)
            for e in m["spec"]["podMetricsEndpoints"]
        }
        assert "metrics" in scraped, what


# ---------------------------------------------------------------- fleet.yaml


def test_fleet_yaml_is_a_valid_cluster_config():
    cfg = fleet()  # parse_config raises, naming the field, on anything invalid

    assert cfg.ray.address == "auto", "the fleet must join the cluster it runs in (and not simulate a WAN)"
    assert cfg.ports == PortsConfig()
    assert cfg.app == APP_NAME


# ---------------------------------------------------------------- Ray node labels


def test_each_group_starts_ray_with_a_role_label():
    for name, group in groups().items():
        labels = ray_labels(group)

        assert "labels" not in group.get("rayStartParams", {}), f"group {name}: KubeRay rejects rayStartParams.labels"
        assert labels.get(ROLE_LABEL) in ROLES, f"group {name}: {ROLE_LABEL}={labels.get(ROLE_LABEL)!r}"
        assert (labels[ROLE_LABEL] == "head") == (name == "head"), f"group {name}: role {labels[ROLE_LABEL]}"
        if name != "head":
            assert labels.get(NODE_LABEL) == name, f"group {name}: {NODE_LABEL} should be the group name"


def test_edge_groups_are_exactly_the_fleet_edge_nodes():
    cfg = fleet()
    edge_groups = {n: ray_labels(g) for n, g in groups().items() if ray_labels(g).get(ROLE_LABEL) == "edge"}

    assert set(edge_groups) == {n.id for n in cfg.fleet.edge_nodes}
    for node in cfg.fleet.edge_nodes:
        assert edge_groups[node.id] == edge_labels(node.id, node.labels)


def test_one_cloud_group_is_the_fleet_cloud():
    cfg = fleet()
    cloud_groups = [g for g in groups().values() if ray_labels(g).get(ROLE_LABEL) == "cloud"]

    assert len(cloud_groups) == 1
    assert ray_labels(cloud_groups[0]) == cloud_labels(cfg.fleet.cloud.id)


def test_head_group_is_labelled_head_only():
    assert ray_labels(groups()["head"]) == {ROLE_LABEL: "head"}


def test_each_worker_group_is_one_pod():
    # All pods of a group share its labels, and a node id must name exactly one Ray node.
    for name, group in groups().items():
        if name != "head":
            assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1, f"group {name}"


def test_group_cpus_are_the_fleet_num_cpus():
    cfg = fleet()
    expected = {n.id: n.num_cpus for n in cfg.fleet.edge_nodes} | {cfg.fleet.cloud.id: cfg.fleet.cloud.num_cpus}
    expected["head"] = cfg.ray.head_cpus

    assert {n: cpu_limit(ray_container(g)) for n, g in groups().items()} == expected
    assert cfg.ray.head_cpus >= 1, "the Gateway runs on the head: it needs CPU"


def test_cloud_group_requests_a_gpu():
    (cloud,) = [g for g in groups().values() if ray_labels(g).get(ROLE_LABEL) == "cloud"]
    resources = ray_container(cloud)["resources"]

    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert resources["requests"].get("nvidia.com/gpu") == resources["limits"]["nvidia.com/gpu"]


def test_each_group_mounts_the_fleet_config_where_the_app_reads_it():
    config_path = Path(the_app()["args"]["config"])
    assert config_path.name == "fleet.yaml"  # the ConfigMap's key

    for name, group in groups().items():
        volumes = {v["name"]: v for v in group["template"]["spec"].get("volumes", [])}
        mounts = [
            m
            for m in ray_container(group).get("volumeMounts", [])
            if volumes.get(m["name"], {}).get("configMap", {}).get("name") == "edgefleet-fleet"
        ]
        assert [Path(m["mountPath"]) for m in mounts] == [config_path.parent], f"group {name}"


# ---------------------------------------------------------------- ports


def test_head_container_ports_are_the_configured_ports():
    ports = container_ports(ray_container(groups()["head"]))
    defaults = PortsConfig()

    assert ports["serve"] == defaults.http
    assert ports["serve-grpc"] == defaults.grpc
    assert ports["dashboard"] == defaults.dashboard
    assert ports["metrics"] == defaults.metrics == 8080  # Ray's metrics export port, KubeRay's default
    assert ports["gcs"] == 6379 and ports["client"] == 10001  # Ray's own: workers and clients connect here


def test_each_group_exports_metrics_on_the_configured_port():
    for name, group in groups().items():
        assert group["rayStartParams"]["metrics-export-port"] == str(PortsConfig().metrics), f"group {name}"


def test_each_group_declares_the_metrics_port_prometheus_discovers():
    """infra/prometheus/prometheus-kuberay.yml keeps pod ports named `metrics`: every Ray pod must declare one."""
    prometheus = yaml.safe_load((ROOT / "infra" / "prometheus" / "prometheus-kuberay.yml").read_text())
    kuberay = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "kuberay")
    port_name = next(
        r["regex"]
        for r in kuberay["relabel_configs"]
        if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    )
    for name, group in groups().items():
        assert container_ports(ray_container(group)).get(port_name) == PortsConfig().metrics, f"group {name}"


def test_serve_config_ports_are_the_configured_ports():
    cfg = serve_config()

    assert cfg["http_options"]["port"] == PortsConfig().http
    assert cfg["http_options"]["host"] == "0.0.0.0", "the proxy must listen beyond the pod's loopback"
    assert cfg["grpc_options"]["port"] == PortsConfig().grpc


def test_grpc_service_reaches_the_serve_grpc_port():
    service = find(KUBERAY, "Service", "edgefleet-grpc")
    (port,) = service["spec"]["ports"]
    head_ports = container_ports(ray_container(groups()["head"]))

    assert port["port"] == PortsConfig().grpc
    assert head_ports[port["targetPort"]] == PortsConfig().grpc


# ---------------------------------------------------------------- Serve config


def test_serve_config_is_valid_for_ray_serve():
    cfg = serve_config()
    ServeDeploySchema.model_validate(cfg)  # ray 2.60's schema is pydantic v2

    # The schema ignores unknown keys (forward compatibility), so a misspelt key would pass it.
    assert set(cfg) <= set(ServeDeploySchema.model_fields), set(cfg) - set(ServeDeploySchema.model_fields)
    for app in cfg["applications"]:
        assert set(app) <= set(ServeApplicationSchema.model_fields), set(app) - set(ServeApplicationSchema.model_fields)


def test_serve_config_registers_the_inference_servicer():
    assert serve_config()["grpc_options"]["grpc_servicer_functions"] == [GRPC_SERVICER]


def test_serve_app_is_the_edgefleet_app():
    app = the_app()

    assert app["name"] == APP_NAME == fleet().app  # the SDK's `application` gRPC metadata
    assert app["route_prefix"] == "/"


def test_serve_import_path_resolves_to_an_app_builder():
    module_name, _, attr = the_app()["import_path"].partition(":")
    module = importlib.import_module(module_name)

    assert callable(getattr(module, attr, None)), (
        f"{the_app()['import_path']}: {module_name} has no callable {attr!r} (the app builder Serve calls with args)"
    )


# ---------------------------------------------------------------- Services and references


def _services(folder: Path) -> list[dict[str, Any]]:
    return [d for d in docs_in(folder) if d.get("kind") == "Service"]


@pytest.mark.parametrize("folder", FOLDERS, ids=rel)
def test_every_service_selects_a_pod_template(folder):
    templates = pod_templates(folder)

    for svc in _services(folder):
        selector = svc["spec"]["selector"]
        hits = [(what, containers) for what, labels, containers in templates if matches(selector, labels)]
        assert hits, f"Service {svc['metadata']['name']} selects {selector}: no pod template in {rel(folder)}"
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for what, containers in hits:
                names = {p.get("name") for c in containers for p in c.get("ports", [])}
                numbers = {p["containerPort"] for c in containers for p in c.get("ports", [])}
                assert target in (names if isinstance(target, str) else numbers), (
                    f"Service {svc['metadata']['name']} targets port {target!r}, not declared by {what}"
                )


@pytest.mark.parametrize("folder", FOLDERS, ids=rel)
def test_every_workload_selector_matches_its_template(folder):
    for doc in docs_in(folder):
        if doc.get("kind") in ("Deployment", "StatefulSet"):
            selector = doc["spec"]["selector"]["matchLabels"]
            assert matches(selector, doc["spec"]["template"]["metadata"]["labels"]), doc["metadata"]["name"]
        if doc.get("kind") == "StatefulSet":
            find(folder, "Service", doc["spec"]["serviceName"])  # its governing Service exists


def test_every_secret_reference_exists():
    secrets = {
        d["metadata"]["name"]: set(d.get("stringData", {})) | set(d.get("data", {}))
        for d in docs_in(MLFLOW)
        if d["kind"] == "Secret"
    }

    for _, _, containers in pod_templates(MLFLOW):
        for c in containers:
            for ref in c.get("envFrom", []):
                assert ref["secretRef"]["name"] in secrets, ref
            for e in c.get("env", []):
                key_ref = e.get("valueFrom", {}).get("secretKeyRef")
                if key_ref:
                    assert key_ref["key"] in secrets.get(key_ref["name"], set()), f"{c['name']}: {e['name']}"


# ---------------------------------------------------------------- MLflow


def test_mlflow_serves_on_the_configured_port():
    assert service_port(MLFLOW, "mlflow") == PortsConfig().mlflow_ui
    assert cli_option(mlflow_args(), "--port") == str(PortsConfig().mlflow_ui)
    assert container_ports(mlflow_container())["http"] == PortsConfig().mlflow_ui


def test_mlflow_args_only_use_defined_env_vars():
    # Kubernetes leaves an undefined $(VAR) in args as literal text: a silent broken URI.
    used = {m for a in mlflow_args() for m in re.findall(r"\$\((\w+)\)", a)}

    assert used <= set(env_of(mlflow_container())), used - set(env_of(mlflow_container()))


def test_mlflow_backend_store_is_the_postgres_service():
    uri = urlparse(cli_option(mlflow_args(), "--backend-store-uri"))
    postgres_db = find(MLFLOW, "Secret", "postgres-credentials")["stringData"]["POSTGRES_DB"]
    db_ref = env_of(mlflow_container())[uri.path.strip("/").strip("$()")]["valueFrom"]["secretKeyRef"]

    assert uri.scheme.split("+")[0] == "postgresql"
    assert (uri.hostname, uri.port) == ("postgres", service_port(MLFLOW, "postgres"))
    assert (db_ref["name"], db_ref["key"]) == ("postgres-credentials", "POSTGRES_DB") and postgres_db


def test_mlflow_artifacts_go_to_the_bucket_the_job_creates():
    destination = urlparse(cli_option(mlflow_args(), "--artifacts-destination"))
    job = find(MLFLOW, "Job", "minio-create-bucket")["spec"]["template"]["spec"]["containers"][0]

    assert "--serve-artifacts" in mlflow_args()
    assert destination.scheme == "s3"
    assert destination.netloc == env_of(job)["BUCKET"]["value"]


@pytest.mark.parametrize("who", ["mlflow", "bucket job"])
def test_s3_endpoints_are_the_minio_service(who):
    if who == "mlflow":
        url = env_of(mlflow_container())["MLFLOW_S3_ENDPOINT_URL"]["value"]
    else:
        job = find(MLFLOW, "Job", "minio-create-bucket")["spec"]["template"]["spec"]["containers"][0]
        url = env_of(job)["MINIO_URL"]["value"]
    endpoint = urlparse(url)

    assert (endpoint.hostname, endpoint.port) == ("minio", service_port(MLFLOW, "minio", "api"))


def test_fleet_tracking_uri_reaches_the_mlflow_service():
    from mlflow.server.security_utils import is_allowed_host_header

    uri = urlparse(fleet().mlflow.tracking_uri)
    allowed = cli_option(mlflow_args(), "--allowed-hosts").split(",")

    assert (uri.scheme, uri.hostname, uri.port) == ("http", "mlflow", service_port(MLFLOW, "mlflow"))
    # MLflow refuses Host headers it does not know; the Ray pods send the Service name.
    assert is_allowed_host_header(allowed, uri.netloc), f"--allowed-hosts {allowed} refuses {uri.netloc}"
