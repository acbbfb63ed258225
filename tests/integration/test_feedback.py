"""Feedback end to end: users rate answers through gRPC, the SDK (sync and async) and HTTP; the rating
is kept on the disk of the request's site node, survives that node's restart, becomes its training
samples, and its text leaves the node neither in a round's payload nor in any log of the fleet."""

from __future__ import annotations

import asyncio
import json
import pickle
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest

ray = pytest.importorskip("ray")

from edgefleet._proto import inference_pb2 as pb  # noqa: E402
from edgefleet._proto import inference_pb2_grpc as pbg  # noqa: E402
from edgefleet.client import (  # noqa: E402
    AsyncClient,
    Client,
    InvalidRequest,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from edgefleet.platform.edge_node import ACTOR_NAMESPACE, actor_name  # noqa: E402
from edgefleet.platform.feedback import FEEDBACK_FILE, FeedbackStore  # noqa: E402
from tests.conftest import TEST_TOKEN, call_until_back  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _post(url: str, body: dict, token: str | None = TEST_TOKEN) -> tuple[int, dict]:
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _stored(fleet_config, node: str) -> list[tuple[str, str]]:
    return FeedbackStore(Path(fleet_config.cache_dir) / "data" / node / FEEDBACK_FILE).examples()


def test_feedback_stays_on_its_site_node_survives_a_restart_and_never_leaves_it_in_the_clear(
    served, fleet_config, tmp_path
):
    marker = f"MARKER{uuid.uuid4().hex}"
    question = f"Which word do I need? {uuid.uuid4().hex[:6]}"
    with Client(served.grpc_address, token=TEST_TOKEN, default_timeout=60) as client:
        at_edge = client.generate(question, site="edge-2", max_new_tokens=6, route="edge")
        assert client.feedback(at_edge, good=False, correction=f"You need {marker}.") == "edge-2"
        # an answer the cloud served is kept at the caller's site, never at the cloud
        at_cloud = client.generate("Say yes.", site="edge-3", max_new_tokens=4, route="cloud")
        assert at_cloud.served_by.startswith("cloud")
        assert client.feedback(at_cloud.request_id, good=True) == "edge-3"
        # bad input: a clear error each, and the server stays up
        with pytest.raises(NotFound, match="request_id"):
            client.feedback("no-such-request", good=True)
        with pytest.raises(InvalidRequest, match="correction"):
            client.feedback(at_edge, good=False, correction="x" * (fleet_config.feedback.max_correction_chars + 1))
        with pytest.raises(InvalidRequest, match="good"):
            client.feedback(at_edge, good="yes")  # type: ignore[arg-type]
    with Client(served.grpc_address, default_timeout=60) as anonymous, pytest.raises(Unauthenticated):
        anonymous.feedback(at_edge, good=True)
    with grpc.insecure_channel(served.grpc_address) as channel:  # a raw caller that sends no rating
        stub = pbg.InferenceServiceStub(channel)
        meta = (("application", "edgefleet"), ("authorization", f"Bearer {TEST_TOKEN}"))
        with pytest.raises(grpc.RpcError) as raw:
            stub.Feedback(pb.FeedbackRequest(request_id=at_edge.request_id), metadata=meta, timeout=30)
        assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "rating" in raw.value.details()

    async def rate_async():  # the async twin
        async with AsyncClient(served.grpc_address, token=TEST_TOKEN, default_timeout=60) as c:
            done = await c.generate("Hello?", site="edge-1", max_new_tokens=4)
            return await c.feedback(done, good=True)

    assert asyncio.run(rate_async()) == "edge-1"

    # HTTP: keyed by the OpenAI response's id
    status, body = _post(
        f"{served.http_url}/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Hi?"}], "max_tokens": 4, "site": "edge-1"},
    )
    assert status == 200, body
    assert _post(f"{served.http_url}/v1/feedback", {"id": body["id"], "rating": "bad", "correction": "Hello."}) == (
        200,
        {"id": body["id"], "node_id": "edge-1"},
    )
    status, err = _post(f"{served.http_url}/v1/feedback", {"id": "nope", "rating": "good"})
    assert status == 404 and err["error"]["param"] == "request_id"
    status, err = _post(f"{served.http_url}/v1/feedback", {"id": body["id"], "rating": "meh"})
    assert status == 400
    assert _post(f"{served.http_url}/v1/feedback", {"id": body["id"], "rating": "good"}, token=None)[0] == 401

    assert (question, f"You need {marker}.") in _stored(fleet_config, "edge-2")
    assert not any(marker in a for _, a in _stored(fleet_config, "edge-3") + _stored(fleet_config, "edge-1"))

    # the node restarts (Ray brings the actor back): what it stored is still there, and it keeps storing
    edge2 = ray.get_actor(actor_name("edge-2"), namespace=ACTOR_NAMESPACE)
    ray.kill(edge2, no_restart=False)
    call_until_back(lambda: edge2.info.remote(), within_s=120)
    kept_after_restart = False
    with Client(served.grpc_address, token=TEST_TOKEN, default_timeout=60) as client:
        for _ in range(60):  # until the Gateway routes to the restarted node again (its model reloads)
            again = client.generate("One more?", site="edge-2", max_new_tokens=4, route="edge")
            if again.node_id == "edge-2":
                try:
                    kept_after_restart = client.feedback(again, good=False, correction="Later.") == "edge-2"
                    break
                except (NotFound, Unavailable):  # its answer went to the node while it was down
                    pass
            time.sleep(0.5)
    assert kept_after_restart
    stored = _stored(fleet_config, "edge-2")
    assert (question, f"You need {marker}.") in stored and ("One more?", "Later.") in stored

    # it trains the node's next update, whose payload carries no text of it
    from edgefleet.federation.messages import TrainRequest
    from edgefleet.federation.participant import handle
    from edgefleet.platform.models import build_tiny
    from edgefleet.train.data import training_samples
    from edgefleet.train.dp import LocalHyper
    from edgefleet.train.jobs import SessionContext

    base, tok = build_tiny()
    samples = training_samples(Path(fleet_config.cache_dir) / "data" / "edge-2", tok, 192)
    assert samples.dim() == 3 and any(marker in tok.decode(row[0]) for row in samples)
    hp = LocalHyper(batch_size=4, physical_batch=4, max_steps=1, epochs=1000.0)
    request = TrainRequest("marker", None, hp, secure=False)
    out = handle(base, samples, request, SessionContext("edge-2", fleet_config.privacy))
    assert marker.encode() not in pickle.dumps(out)
    # nor in the MLflow store or the artifacts of the version an update trained on it becomes
    import mlflow.artifacts
    from mlflow import MlflowClient

    from edgefleet.mlflow.registry import ModelRegistry
    from edgefleet.train.dp import export_adapter, local_update
    from tests.integration.test_registry import NAME, record

    trained = local_update(base, None, samples, fleet_config.privacy, hp)
    mlflow_dir = tmp_path / "mlflow"
    registry = ModelRegistry(f"sqlite:///{mlflow_dir / 'mlflow.db'}", NAME, outbox=mlflow_dir / "outbox")
    version = registry.publish(record(1, 5.0, run="marker"), export_adapter(base, trained.adapter, hp, tmp_path / "a"))
    assert version is not None
    run_id = MlflowClient(registry.uri).get_model_version(NAME, version).run_id
    mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}", dst_path=str(mlflow_dir / "model"))
    mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(mlflow_dir / "run"))
    scanned = [p for p in mlflow_dir.rglob("*") if p.is_file()]
    assert any(p.name == "adapter_config.json" for p in scanned) and any(p.suffix == ".db" for p in scanned)
    assert not [p.name for p in scanned if marker.encode() in p.read_bytes()]
    # nor is it in any log of the fleet (Gateway, nodes, proxies, GCS)
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [p.name for p in logs.rglob("*") if p.is_file() and marker.encode() in p.read_bytes()]
    assert not leaked
