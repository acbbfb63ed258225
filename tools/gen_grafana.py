"""Write infra/grafana/edgefleet.json, the Grafana dashboard of edgefleet's own metrics.

The panels (title, PromQL, unit) are chosen here by hand; tests/unit/test_dashboards.py checks
that every metric in edgefleet/metrics.py is on some panel, that every panel queries a metric
that exists, and that none queries a deprecated one (metrics.DEPRECATED: still exported, but
dashboards use their replacements). Run after changing either:  .venv/bin/python tools/gen_grafana.py
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "infra" / "grafana" / "edgefleet.json"
W = "[$__rate_interval]"

# (row, title, panel type, unit, [(PromQL, legend)]). Federation gauges come from the `edgefleet federate`
# driver and end with it: their panels look back over 7 days (*_over_time), so they stay filled
# between runs instead of going blank 5 minutes after the last one.
PANELS = [
    (
        "Requests",
        "Requests/s by tier and outcome",
        "timeseries",
        "reqps",
        [(f"sum by (tier, outcome) (rate(ray_edgefleet_requests_total{W}))", "{{tier}} {{outcome}}")],
    ),
    (
        "Requests",
        "SLA attainment (requests with a deadline)",
        "timeseries",
        "percentunit",
        [
            (
                f'sum by (node) (rate(ray_edgefleet_sla_total{{result="met"}}{W})) / '
                f"sum by (node) (rate(ray_edgefleet_sla_total{W}))",
                "{{node}}",
            )
        ],
    ),
    (
        "Requests",
        "SLA met and missed /s",
        "timeseries",
        "reqps",
        [(f"sum by (result) (rate(ray_edgefleet_sla_total{W}))", "{{result}}")],
    ),
    (
        "Requests",
        "Time to first token p50 / p95",
        "timeseries",
        "s",
        [
            (
                f"histogram_quantile(0.5, sum by (le, tier) (rate(ray_edgefleet_ttft_seconds_bucket{W})))",
                "p50 {{tier}}",
            ),
            (
                f"histogram_quantile(0.95, sum by (le, tier) (rate(ray_edgefleet_ttft_seconds_bucket{W})))",
                "p95 {{tier}}",
            ),
        ],
    ),
    (
        "Requests",
        "Latency p50 / p95",
        "timeseries",
        "s",
        [
            (
                f"histogram_quantile(0.5, sum by (le, tier) (rate(ray_edgefleet_latency_seconds_bucket{W})))",
                "p50 {{tier}}",
            ),
            (
                f"histogram_quantile(0.95, sum by (le, tier) (rate(ray_edgefleet_latency_seconds_bucket{W})))",
                "p95 {{tier}}",
            ),
        ],
    ),
    (
        "Requests",
        "Inter-token latency p50 / p95 (streamed answers)",
        "timeseries",
        "s",
        [
            (
                "histogram_quantile(0.5, sum by (le, tier) "
                f"(rate(ray_edgefleet_inter_token_latency_seconds_bucket{W})))",
                "p50 {{tier}}",
            ),
            (
                "histogram_quantile(0.95, sum by (le, tier) "
                f"(rate(ray_edgefleet_inter_token_latency_seconds_bucket{W})))",
                "p95 {{tier}}",
            ),
        ],
    ),
    (
        "Requests",
        "Router prediction error p95 (over = predicted too slow, under = too fast)",
        "timeseries",
        "s",
        [
            (
                "histogram_quantile(0.95, sum by (le, direction) "
                f"(rate(ray_edgefleet_prediction_error_seconds_bucket{W})))",
                "p95 {{direction}}",
            ),
            (
                "histogram_quantile(0.5, sum by (le, direction) "
                f"(rate(ray_edgefleet_prediction_error_seconds_bucket{W})))",
                "p50 {{direction}}",
            ),
            (
                f"sum by (direction) (rate(ray_edgefleet_prediction_error_seconds_count{W}))",
                "requests/s {{direction}}",
            ),
        ],
    ),
    (
        "Requests",
        "Hedges and failovers /s",
        "timeseries",
        "reqps",
        [
            (f"sum by (node) (rate(ray_edgefleet_hedges_total{W}))", "hedged from {{node}}"),
            (f"sum by (node) (rate(ray_edgefleet_failovers_total{W}))", "failed over from {{node}}"),
        ],
    ),
    (
        "Requests",
        "Rejections /s by reason",
        "timeseries",
        "reqps",
        [(f"sum by (reason) (rate(ray_edgefleet_rejections_total{W}))", "{{reason}}")],
    ),
    (
        "Nodes",
        "Tokens/s, prompt and generation",
        "timeseries",
        "short",
        [
            (f"sum by (tier) (rate(ray_edgefleet_prompt_tokens_total{W}))", "prompt {{tier}}"),
            (f"sum by (tier) (rate(ray_edgefleet_generation_tokens_total{W}))", "generation {{tier}}"),
        ],
    ),
    (
        "Nodes",
        "Generation tokens/s by node",
        "timeseries",
        "short",
        [(f"sum by (node) (rate(ray_edgefleet_generation_tokens_total{W}))", "{{node}}")],
    ),
    ("Nodes", "Queue depth", "timeseries", "short", [("max by (node) (ray_edgefleet_queue_depth)", "{{node}}")]),
    (
        "Nodes",
        "Model version per node",
        "table",
        "none",
        [("max by (node, model, version) (ray_edgefleet_model_info) == 1", "")],
    ),
    (
        "Federation and models",
        "Federated round",
        "stat",
        "none",
        [("max by (run) (max_over_time(ray_edgefleet_federation_round[7d]))", "{{run}}")],
    ),
    (
        "Federation and models",
        "Round duration",
        "timeseries",
        "s",
        [
            ("max by (run) (last_over_time(ray_edgefleet_federation_last_round_seconds[7d]))", "last round, {{run}}"),
            (
                "histogram_quantile(0.95, sum by (le) (increase(ray_edgefleet_federation_round_seconds_bucket[1d])))",
                "p95 over a day (bucketed)",
            ),
        ],
    ),
    (
        "Federation and models",
        "Since the last committed round",
        "stat",
        "s",
        [("time() - max(max_over_time(ray_edgefleet_federation_last_commit_timestamp[7d]))", "")],
    ),
    (
        "Federation and models",
        "Privacy budget used per client (ε spent / ε budget)",
        "bargauge",
        "percentunit",
        [
            (
                "max by (client) (last_over_time(ray_edgefleet_epsilon[7d])) / "
                "max by (client) (last_over_time(ray_edgefleet_epsilon_budget[7d]))",
                "{{client}}",
            )
        ],
    ),
    (
        "Federation and models",
        "Champion version",
        "stat",
        "none",
        [("max by (model) (ray_edgefleet_champion_version)", "{{model}}")],
    ),
    (
        "Federation and models",
        "Rollout state",
        "state-timeline",
        "none",
        [("max by (state) (ray_edgefleet_rollout_state) == 1", "{{state}}")],
    ),
    (
        "Federation and models",
        "Edge nodes off the champion",
        "timeseries",
        "none",
        [("max by (model) (ray_edgefleet_nodes_off_champion)", "{{model}}")],
    ),
]


def build() -> dict:
    panels, y, next_id, row_seen = [], 0, 1, None
    x = 0
    for row, title, kind, unit, queries in PANELS:
        if row != row_seen:
            y += 8 if row_seen is not None and x else 0
            x = 0
            panels.append(
                {
                    "id": next_id,
                    "type": "row",
                    "title": row,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                }
            )
            next_id, y, row_seen = next_id + 1, y + 1, row
        panels.append(
            {
                "id": next_id,
                "type": kind,
                "title": title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "expr": expr,
                        "legendFormat": legend,
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    }
                    for i, (expr, legend) in enumerate(queries)
                ],
            }
        )
        next_id += 1
        x += 8
        if x >= 24:
            x, y = 0, y + 8
    return {
        "title": "edgefleet",
        "uid": "edgefleet",
        "description": "edgefleet's own metrics (edgefleet/metrics.py); Ray's Serve dashboards show the replicas.",
        "tags": ["edgefleet", "ray"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}]
        },
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT.relative_to(OUT.parents[2])} ({len(PANELS)} panels)")
