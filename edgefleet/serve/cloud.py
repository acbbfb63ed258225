"""The cloud fallback: a Ray Serve deployment on the cloud-labelled node(s).

Full precision (or any configured model), more replicas when busy, and real backpressure:
``max_queued_requests`` makes Serve refuse work beyond the queue instead of letting every caller
wait. Same :class:`GenerationEngine` as the edge, so edge and cloud stream the same events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve

from edgefleet.config import CloudConfig
from edgefleet.platform.model_server import ModelServer
from edgefleet.platform.topology import role_selector


class Cloud(ModelServer):
    """One cloud replica (see :class:`ModelServer`). Built by :func:`cloud_deployment`."""

    tier = "cloud"


def cloud_deployment(cloud: CloudConfig, *, cache_dir: Path | None, log_level: str = "INFO") -> Any:
    """The bound Cloud deployment for ``serve.run`` (as a Gateway argument)."""
    replicas = cloud.replicas
    return (
        serve.deployment(Cloud)
        .options(
            name="Cloud",
            ray_actor_options={"num_cpus": cloud.replica_cpus, "label_selector": role_selector("cloud")},
            autoscaling_config={
                "min_replicas": 1,
                "initial_replicas": replicas,
                "max_replicas": max(replicas, 1),
                "target_ongoing_requests": 8,
            },
            max_ongoing_requests=32,  # the engine batches 8 at a time; more would only queue inside it
            max_queued_requests=cloud.max_queued_requests,
            health_check_period_s=5,
            # Its only caller is the Gateway, whose 10 Hz stats polls would fill the access log (and
            # every driver's terminal) with ten lines a second; requests are logged at the Gateway.
            logging_config={"log_level": log_level, "enable_access_log": False},
        )
        .bind(cloud.id, cloud.model, str(cache_dir) if cache_dir else None, cloud.batching)
    )
