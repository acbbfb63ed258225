"""How the InferenceService is registered on Serve's gRPC proxy (``grpc_servicer_functions``).

The generated ``add_InferenceServiceServicer_to_server`` decodes the body in the proxy, and a body
that is not a ``GenerateRequest`` then ends as UNKNOWN ("Unexpected DecodeError"), a status that
blames nobody. Here the same handlers decode tolerantly: undecodable bytes travel on to the Gateway
as :class:`UndecodableRequest`, which answers INVALID_ARGUMENT naming the problem. Imported by the
proxy, so it stays light: grpc and the generated stubs only.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from edgefleet._proto import inference_pb2 as pb

SERVICE = "edgefleet.v1.InferenceService"


class UndecodableRequest:
    """Bytes that did not parse as a GenerateRequest, and why (picklable: it crosses to the replica)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _generate_request(data: bytes) -> pb.GenerateRequest | UndecodableRequest:
    try:
        return pb.GenerateRequest.FromString(data)
    except DecodeError as exc:
        return UndecodableRequest(str(exc))


def _feedback_request(data: bytes) -> pb.FeedbackRequest | UndecodableRequest:
    try:
        return pb.FeedbackRequest.FromString(data)
    except DecodeError as exc:
        return UndecodableRequest(str(exc))


def add_inference_servicer(servicer, server) -> None:  # noqa: ANN001 - grpc's own untyped signature
    handlers = {
        "Generate": grpc.unary_unary_rpc_method_handler(
            servicer.Generate,
            request_deserializer=_generate_request,
            response_serializer=pb.GenerateResponse.SerializeToString,
        ),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(
            servicer.GenerateStream,
            request_deserializer=_generate_request,
            response_serializer=pb.GenerateChunk.SerializeToString,
        ),
        "Feedback": grpc.unary_unary_rpc_method_handler(
            servicer.Feedback,
            request_deserializer=_feedback_request,
            response_serializer=pb.FeedbackResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
