"""The committed stubs in edgefleet/_proto are exactly what `make proto` generates from protos/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--check"], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_stubs_import_and_keep_the_full_proto_name():
    from edgefleet._proto import inference_pb2, inference_pb2_grpc

    assert inference_pb2.DESCRIPTOR.name == "edgefleet/v1/inference.proto"
    assert hasattr(inference_pb2_grpc, "InferenceServiceStub")


def test_messages_pickle_round_trip():
    # Serve pickles requests between the proxy and the Gateway: the class must be importable by name.
    import pickle

    from edgefleet._proto import inference_pb2 as pb

    req = pb.GenerateRequest(prompt="hi", max_new_tokens=3)

    assert pickle.loads(pickle.dumps(req)) == req
