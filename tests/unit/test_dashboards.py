"""The Grafana dashboard and Prometheus config agree with the metrics the code defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from edgefleet import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra" / "grafana" / "edgefleet.json"
PROMETHEUS = ROOT / "infra" / "prometheus" / "prometheus.yml"
PROMETHEUS_KUBERAY = ROOT / "infra" / "prometheus" / "prometheus-kuberay.yml"
SERIES = re.compile(r"\bray_edgefleet_\w+")


def panel_queries(dashboard: dict) -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard["panels"] if p["type"] != "row"}


def queried_series(dashboard: dict) -> set[str]:
    return {s for exprs in panel_queries(dashboard).values() for e in exprs for s in SERIES.findall(e)}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_every_metric_the_code_defines_is_on_some_panel(dashboard):
    used = queried_series(dashboard)
    missing = [m.name for m in metrics.METRICS if not m.deprecated and not used & set(m.series)]
    assert not missing, f"metrics with no panel in {DASHBOARD.name}: {missing}"


def test_no_panel_queries_a_deprecated_metric(dashboard):
    """Deprecated metrics are still exported for one release, for other consumers; the dashboard has moved on."""
    used = queried_series(dashboard)
    for m in metrics.DEPRECATED:
        assert not used & set(m.series), f"{DASHBOARD.name} queries {m.name}: use {m.replaced_by}"


def test_every_panel_queries_only_metrics_that_exist(dashboard):
    exported = {s for m in metrics.METRICS for s in m.series}
    for title, exprs in panel_queries(dashboard).items():
        assert exprs, f"panel {title!r} has no query"
        for expr in exprs:
            found = SERIES.findall(expr)
            assert found, f"panel {title!r} queries none of edgefleet's metrics: {expr}"
            unknown = set(found) - exported
            assert not unknown, f"panel {title!r} queries {sorted(unknown)}, which the code does not export"


def test_a_renamed_metric_would_be_caught(dashboard):
    """The checks above can fail: drop a metric's panels and it is reported missing."""
    broken = {**dashboard, "panels": [p for p in dashboard["panels"] if "Queue depth" not in p["title"]]}
    used = queried_series(broken)
    assert not used & set(metrics.BY_NAME["edgefleet_queue_depth"].series)


def test_panels_have_unique_ids_and_do_not_overlap(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_the_committed_dashboard_is_what_the_generator_writes(dashboard):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_grafana", ROOT / "tools" / "gen_grafana.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.build() == dashboard, "infra/grafana/edgefleet.json is stale: run tools/gen_grafana.py"


def test_exported_names_follow_rays_prefix_and_counter_suffix():
    requests = metrics.BY_NAME["edgefleet_requests"]
    assert requests.exported == "ray_edgefleet_requests_total"
    assert metrics.BY_NAME["edgefleet_ttft_seconds"].series == (
        "ray_edgefleet_ttft_seconds_bucket",
        "ray_edgefleet_ttft_seconds_sum",
        "ray_edgefleet_ttft_seconds_count",
    )
    assert metrics.BY_NAME["edgefleet_generation_tokens"].exported == "ray_edgefleet_generation_tokens_total"


def test_prometheus_scrapes_rays_service_discovery_file_and_kuberay_metrics_ports():
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    files = [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]]
    assert files == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS_KUBERAY.read_text())["scrape_configs"]}
    keep_port = [
        r
        for r in jobs["kuberay"]["relabel_configs"]
        if r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    ]
    assert keep_port and keep_port[0]["regex"] == "metrics"


def test_metric_definitions_are_valid_for_ray_and_prometheus():
    """Ray's C++ metrics take ASCII only (a 'ε' in a description crashed a round once)."""
    name = re.compile(r"^[a-z_][a-z0-9_]*$")
    for m in metrics.METRICS:
        assert name.match(m.name) and m.name.startswith("edgefleet_"), m.name
        assert m.description.isascii(), f"{m.name}: non-ASCII description"
        assert all(name.match(t) for t in m.tags), m.tags
        assert m.kind in ("counter", "gauge", "histogram")
        if m.kind == "histogram":
            assert list(m.boundaries) == sorted(m.boundaries) and m.boundaries[0] > 0, m.name


def test_metric_names_carry_base_units():
    """Prometheus' conventions (vLLM's too): a time is in seconds and says so, never milliseconds; a counter's
    Ray name has no _total (Ray adds it). Only deprecated metrics may break this, until they are removed."""
    for m in metrics.METRICS:
        if m.deprecated:
            continue
        assert not re.search(r"_(ms|millis\w*|minutes|hours)$", m.name), f"{m.name}: use base units (seconds)"
        assert not m.name.endswith("_total"), f"{m.name}: Ray appends _total to a counter"
        if m.kind == "histogram":
            assert m.name.endswith(("_seconds", "_bytes")), f"{m.name}: a histogram's name ends with its unit"
        if m.name.endswith("_seconds") and m.kind == "histogram":
            assert max(m.boundaries) <= 24 * 3600, f"{m.name}: boundaries look like milliseconds"


def test_deprecated_metrics_name_a_live_replacement_and_when_they_go():
    assert metrics.DEPRECATED, "nothing is deprecated: drop this test with the last deprecated metric"
    for m in metrics.DEPRECATED:
        new = metrics.BY_NAME[m.replaced_by]
        assert not new.deprecated and (new.kind, new.tags) == (m.kind, m.tags), m.name
        assert m.description.startswith(f"Deprecated, removed in {metrics.REMOVED_IN}: use {new.name}"), m.name
        if m.kind == "histogram":  # the same buckets, in the old unit
            assert [b / m.scale for b in m.boundaries] == pytest.approx(list(new.boundaries)), m.name


def test_operations_doc_lists_every_metric_and_the_deprecated_ones():
    doc = (ROOT / "docs" / "operations.md").read_text()
    for m in metrics.METRICS:
        assert m.exported in doc, f"docs/operations.md does not mention {m.exported}"
    for m in metrics.DEPRECATED:
        line = next(line for line in doc.splitlines() if m.exported in line and "deprecated" in line)
        assert f"removed in {metrics.REMOVED_IN}" in line, line
