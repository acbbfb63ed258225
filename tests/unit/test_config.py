"""Configuration: defaults describe the embedded fleet; bad files fail naming the field and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.config import EdgefleetConfig, load_config, parse_config
from edgefleet.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet.yaml"


def test_defaults_are_the_embedded_fleet():
    cfg = EdgefleetConfig()

    assert [n.id for n in cfg.fleet.edge_nodes] == ["edge-1", "edge-2", "edge-3"]
    assert cfg.fleet.cloud.id == "cloud"
    assert all(n.actor_cpus < n.num_cpus for n in cfg.fleet.edge_nodes)  # fractional shares
    assert cfg.fleet.edge_nodes[0].site == "edge-1"  # site defaults to the node id
    assert cfg.tracking_uri.startswith("sqlite:///")


def test_example_file_is_valid_and_matches_defaults_where_it_says_so():
    cfg = load_config(EXAMPLE)

    assert len(cfg.fleet.edge_nodes) == 3
    assert cfg.fleet.edge_nodes[0].labels == {"zone": "north"}
    assert cfg.routing == EdgefleetConfig().routing
    assert cfg.privacy == EdgefleetConfig().privacy


def test_no_file_and_empty_file_give_defaults(write_config):
    assert load_config(None) == load_config(write_config(""))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"fleet": {"edge_nodes": [{"id": "edge-1", "network": {"rtt_ms": -5}}]}},
            "fleet.edge_nodes.0.network.rtt_ms: Input should be greater than or equal to 0 (got -5)",
        ),
        ({"fleet": {"edge_nodes": [{"id": "Edge_1"}]}}, "fleet.edge_nodes.0.id: String should match pattern"),
        ({"fleet": {"edge_nodes": [{"id": "a"}, {"id": "a"}]}}, "node ids must be unique, repeated: a"),
        ({"fleet": {"edge_nodes": [{"id": "a", "actor_cpus": 4, "num_cpus": 2}]}}, "actor_cpus=4.0 exceeds num_cpus=2"),
        ({"fleet": {"edge_nodes": []}}, "fleet.edge_nodes: List should have at least 1 item"),
        ({"routng": {}}, "routng: unknown field"),
        ({"routing": {"cost_order": ["edge", "edge"]}}, "routing.cost_order: tiers must not repeat"),
        ({"routing": {"policy": "fastest"}}, "routing.policy: Input should be 'sla', 'least_loaded'"),
        ({"privacy": {"noise_multiplier": 1.0}}, "set exactly one of target_epsilon and noise_multiplier"),
        ({"ports": {"grpc": 8000, "http": 8000}}, "ports must be distinct: grpc and http are all 8000"),
        # a default the user never wrote is named too: Ray's head agent holds 52365 unless moved
        ({"ports": {"metrics": 52365}}, "ports must be distinct: metrics and dashboard_agent are all 52365"),
        ({"federation": {"clients_per_round": 5}}, "clients_per_round=5 exceeds the 3 edge nodes"),
        (
            {"fleet": {"edge_nodes": [{"id": "a", "labels": {"edgefleet.io/role": "cloud"}}]}},
            "labels under 'edgefleet.io/' are set by edgefleet itself",
        ),
        (
            {"fleet": {"edge_nodes": [{"id": "a", "model": {"quantization": "int4"}}]}},
            "fleet.edge_nodes.0.model.quantization: Input should be 'none', 'int8' or 'bf16'",
        ),
    ],
)
def test_invalid_config_names_field_and_reason(write_config, data, expected):
    path = write_config(data)

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_config({"ray": {"head_cpus": -1, "object_store_mb": 1}})

    assert "ray.head_cpus" in str(info.value) and "ray.object_store_mb" in str(info.value)


def test_yaml_syntax_error_gives_line_and_column(write_config):
    path = write_config("fleet:\n  edge_nodes: [\n    {id: a\n  cloud: x: y\n")

    with pytest.raises(ConfigError, match=r"line \d+, column \d+: not valid YAML"):
        load_config(path)


def test_top_level_must_be_a_mapping(write_config):
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config(write_config("- a\n- b\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_bad_config_briefly_and_exits_2(write_config):
    # A subprocess, as a user runs it: this test process may also carry Ray's forwarded worker logs.
    import subprocess
    import sys

    path = write_config({"fleet": {"edge_nodes": [{"id": "edge-1", "network": {"rtt_ms": "far"}}]}})

    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "--config", str(path), "status"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert out.returncode == 2
    assert "fleet.edge_nodes.0.network.rtt_ms" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": 2**64}, "seed"),
        ({"seed": -1}, "seed"),
        ({"temperature": 1e-300}, "temperature"),
        ({"stop": ["x" * 300]}, "stop"),
        ({"request_id": "a/b"}, "request_id"),  # a caller's id keys its feedback: no odd characters
        ({"request_id": "x" * 129}, "request_id"),
        ({"site": "s" * 129}, "site"),  # kept with each answer for feedback: bounded
        ({"site": "a\nb"}, "site"),
    ],
)
def test_request_validation_rejects_values_that_would_break_a_batch(kwargs, field):
    from edgefleet.serve.validation import RequestError, validate

    base = dict(
        prompt="hi",
        messages=None,
        max_new_tokens=4,
        temperature=0.0,
        top_p=None,
        seed=None,
        stop=None,
        deadline_ms=None,
        route="auto",
        site="",
        priority="normal",
        request_id=None,
        cfg=EdgefleetConfig(),
    )

    with pytest.raises(RequestError) as info:
        validate(**{**base, **kwargs})

    assert info.value.param == field


def test_a_one_edge_fleet_is_a_valid_config_even_with_secure_aggregation_on():
    from edgefleet.config import parse_config

    cfg = parse_config(
        {"fleet": {"edge_nodes": [{"id": "edge-1"}]}, "federation": {"clients_per_round": 1, "min_clients": 1}}
    )

    assert cfg.federation.secure_aggregation and cfg.federation.clients_per_round == 1


def test_a_robust_rule_under_secure_aggregation_is_refused_with_the_reason():
    import pytest

    from edgefleet.config import parse_config
    from edgefleet.errors import ConfigError

    with pytest.raises(ConfigError, match="needs each client's update in the clear"):
        parse_config({"federation": {"strategy": "fedmedian"}})


def test_every_rule_declared_to_need_each_update_is_refused_under_secure_aggregation_and_allowed_in_the_clear():
    import pytest

    from edgefleet.config import STRATEGY_NEEDS_EACH_UPDATE, parse_config
    from edgefleet.errors import ConfigError

    for name, needs_each_update in STRATEGY_NEEDS_EACH_UPDATE.items():
        assert parse_config({"federation": {"strategy": name, "secure_aggregation": False}}).federation.strategy == name
        if needs_each_update:
            with pytest.raises(ConfigError, match=f"strategy {name} needs each client's update in the clear"):
                parse_config({"federation": {"strategy": name}})
        else:
            assert parse_config({"federation": {"strategy": name}}).federation.secure_aggregation


def test_user_level_dp_is_refused_with_a_rule_that_needs_each_update():
    """DP-FedAvg releases a noised mean: a median or trimmed mean under it would silently be a mean."""
    import pytest

    from edgefleet.config import STRATEGY_NEEDS_EACH_UPDATE, parse_config
    from edgefleet.errors import ConfigError
    from edgefleet.federation.strategies import make_strategy

    for name, needs_each_update in STRATEGY_NEEDS_EACH_UPDATE.items():
        fed = {"strategy": name, "secure_aggregation": False, "user_dp": {}}
        if needs_each_update:
            with pytest.raises(ConfigError, match=f"user_dp .* strategy {name} would never see"):
                parse_config({"federation": fed})
            with pytest.raises(ValueError, match=f"{name} cannot run under user-level DP"):
                make_strategy(name, user_dp=(0.05, 1.0))
        else:
            assert parse_config({"federation": fed}).federation.user_dp is not None
            assert make_strategy(name, user_dp=(0.05, 1.0)).name == f"dp-{make_strategy(name).name}"


def test_canary_nodes_must_be_edge_nodes_and_leave_some_to_compare_with():
    import pytest

    from edgefleet.config import parse_config
    from edgefleet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"canary_nodes \['edge-9'\] are not edge nodes"):
        parse_config({"mlflow": {"canary_nodes": ["edge-9"]}})
    with pytest.raises(ConfigError, match="leave at least one edge node"):
        parse_config({"mlflow": {"canary_nodes": ["edge-1", "edge-2", "edge-3"]}})
    assert parse_config({"mlflow": {"canary_nodes": ["edge-2"]}}).mlflow.canary_nodes == ["edge-2"]


def test_the_tracking_uri_is_the_configs_else_mlflows_variable_else_sqlite_in_the_cache(monkeypatch, tmp_path):
    from edgefleet.config import parse_config

    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert parse_config({}).tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert parse_config({}).tracking_uri == "http://127.0.0.1:5999"
    assert parse_config({"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}).tracking_uri == "http://127.0.0.1:5000"


def test_pointing_mlflow_at_a_store_leaks_nothing_into_the_environment(monkeypatch):
    """MLflow's setters export MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI, which a config reads as
    the user's choice: after one registry was used, a second config in the process (or a CLI it
    runs) read and published to the first one's store."""
    import os

    import mlflow

    from edgefleet.config import EdgefleetConfig, use_mlflow_uris

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://registry:5000")  # the user's own: kept
    use_mlflow_uris("sqlite:////tmp/a/mlflow.db", "sqlite:////tmp/a/registry.db")

    assert mlflow.get_tracking_uri() == "sqlite:////tmp/a/mlflow.db"  # MLflow itself points there
    assert "MLFLOW_TRACKING_URI" not in os.environ and os.environ["MLFLOW_REGISTRY_URI"] == "http://registry:5000"
    other = EdgefleetConfig.model_validate({"cache_dir": "/tmp/b"})
    assert other.tracking_uri == "sqlite:////tmp/b/mlflow/mlflow.db"


def test_pointing_mlflow_from_many_threads_at_once_leaks_nothing():
    import os
    from concurrent.futures import ThreadPoolExecutor

    from edgefleet.config import use_mlflow_uris

    def point(i: int) -> None:
        for _ in range(50):
            use_mlflow_uris(f"sqlite:////tmp/t{i}/mlflow.db", f"sqlite:////tmp/t{i}/mlflow.db")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(point, range(8)))  # raises here if one thread's restore broke another's
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
