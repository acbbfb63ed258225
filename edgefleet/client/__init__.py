"""The gRPC client SDK of edgefleet. It imports grpcio and protobuf only: never ray, torch or the server code.

Example:
    >>> from edgefleet.client import Client
    >>> with Client("127.0.0.1:9000", default_timeout=5.0) as c:  # doctest: +SKIP
    ...     done = c.generate("The capital of France is", max_new_tokens=8)
    ...     print(done.text, done.served_by)
"""

from edgefleet.client.aio import AsyncClient
from edgefleet.client.client import Client
from edgefleet.client.errors import (
    DeadlineExceeded,
    EdgefleetClientError,
    InvalidRequest,
    NotFound,
    Overloaded,
    RPCError,
    Unauthenticated,
    Unavailable,
)
from edgefleet.client.types import Chunk, Completion

__all__ = [
    "AsyncClient",
    "Chunk",
    "Client",
    "Completion",
    "DeadlineExceeded",
    "EdgefleetClientError",
    "InvalidRequest",
    "NotFound",
    "Overloaded",
    "RPCError",
    "Unauthenticated",
    "Unavailable",
]
