"""The gRPC front door: TLS and a request-size limit in front of Serve's gRPC proxy.

Serve's gRPC proxy (Ray 2.60) listens in plaintext only and accepts messages of up to 2 GiB, with no
option to change either. When the config asks for TLS (``auth.tls_cert``/``tls_key``) or a size
limit (``ingress.max_request_bytes``), :class:`GrpcFront` takes the public gRPC port instead:

    client ──TLS──▶ GrpcFront (head node, ports.grpc) ──plaintext, loopback──▶ Serve proxy (ports.grpc_internal)

It forwards each call's bytes untouched (no decoding: the Gateway stays the one place that reads a
request), with the caller's metadata and remaining deadline, and hands the upstream status, details
and trailers (``retry-after-ms``) back unchanged. A body over the limit is refused by grpc itself,
before it is buffered whole: RESOURCE_EXHAUSTED, the status gRPC gives an over-size message.

The Serve proxy behind it still binds every interface; on a real cluster its port must stay
internal (a NetworkPolicy on KubeRay), or TLS can be walked around.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc

from edgefleet.serve.grpc_api import SERVICE

UNARY, STREAM, FEEDBACK = "Generate", "GenerateStream", "Feedback"
# Metadata grpc sets itself on each hop; forwarding it would duplicate or contradict the new call's own.
_HOP_BY_HOP = ("user-agent", "grpc-")


def forwarded_metadata(metadata: Any) -> list[tuple[str, Any]]:
    """The caller's metadata that goes on upstream: everything but pseudo-headers and hop-by-hop keys."""
    return [(k, v) for k, v in (metadata or ()) if not k.startswith(":") and not k.startswith(_HOP_BY_HOP)]


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; a missing or unreadable file is named."""
    try:
        return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
    except OSError as exc:
        raise ValueError(f"auth.tls_cert / auth.tls_key: cannot read {exc.filename}: {exc.strerror}") from exc


class FrontServer:
    """A grpc.aio server forwarding the InferenceService to ``upstream``; runs in any event loop.

    Args:
        bind: ``host:port`` to listen on.
        upstream: Serve's gRPC proxy, ``host:port``.
        max_request_bytes: Largest request body accepted; bigger ones end RESOURCE_EXHAUSTED.
        credentials: TLS credentials, or None for plaintext (a size limit alone).
    """

    def __init__(
        self, bind: str, upstream: str, *, max_request_bytes: int, credentials: grpc.ServerCredentials | None = None
    ) -> None:
        self.bind, self.upstream = bind, upstream
        self._max = max_request_bytes
        self._credentials = credentials
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        self._channel = grpc.aio.insecure_channel(self.upstream)
        self._server = grpc.aio.server(options=[("grpc.max_receive_message_length", self._max)])
        handlers = {
            UNARY: grpc.unary_unary_rpc_method_handler(partial(self._unary, UNARY)),  # bytes pass through as is
            FEEDBACK: grpc.unary_unary_rpc_method_handler(partial(self._unary, FEEDBACK)),
            STREAM: grpc.unary_stream_rpc_method_handler(self._stream),
        }
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if self._credentials is not None:
            port = self._server.add_secure_port(self.bind, self._credentials)
        else:
            port = self._server.add_insecure_port(self.bind)
        await self._server.start()
        return port

    async def stop(self, grace_s: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
        if self._channel is not None:
            await self._channel.close()

    def _call_kwargs(self, context: grpc.aio.ServicerContext) -> dict[str, Any]:
        remaining = context.time_remaining()  # None without a client deadline
        return {
            "metadata": forwarded_metadata(context.invocation_metadata()),
            "timeout": remaining if remaining is not None and remaining < 1e9 else None,
        }

    async def _unary(self, method: str, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        call = self._channel.unary_unary(f"/{SERVICE}/{method}")(body, **self._call_kwargs(context))
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            await _relay_error(exc, context)

    async def _stream(self, body: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        call = self._channel.unary_stream(f"/{SERVICE}/{STREAM}")(body, **self._call_kwargs(context))
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as exc:
            await _relay_error(exc, context)
        finally:
            call.cancel()  # the caller went away (or we are done): stop the generation upstream too


async def _relay_error(exc: grpc.aio.AioRpcError, context: grpc.aio.ServicerContext) -> None:
    # The caller sees the Gateway's own status, message and trailers, as if there were no front.
    context.set_trailing_metadata(tuple(forwarded_metadata(exc.trailing_metadata())))
    await context.abort(exc.code(), exc.details() or "")


class GrpcFront:
    """Ray actor wrapper: the front runs inside an async actor on the head node (see :func:`spawn_front`)."""

    def __init__(
        self, bind: str, upstream: str, max_request_bytes: int, tls_cert: str | None, tls_key: str | None
    ) -> None:
        creds = server_credentials(Path(tls_cert), Path(tls_key)) if tls_cert and tls_key else None
        self._front = FrontServer(bind, upstream, max_request_bytes=max_request_bytes, credentials=creds)
        self._port: int | None = None

    async def ready(self) -> int:
        """Start the server on first call; returns the bound port."""
        if self._port is None:
            self._port = await self._front.start()
        return self._port

    async def stop(self) -> None:
        await self._front.stop()


def spawn_front(cfg: Any) -> Any:
    """Start the front for ``cfg`` on the head node; returns the actor once it listens."""
    import ray

    from edgefleet.platform.topology import head_placement

    placement = head_placement(ray.nodes())
    tls = [str(cfg.auth.tls_cert), str(cfg.auth.tls_key)] if cfg.auth.tls_cert else [None, None]
    actor = (
        ray.remote(GrpcFront)
        .options(num_cpus=0.05, max_concurrency=1000, **placement)
        .remote(
            f"{cfg.ingress.host}:{cfg.ports.grpc}", f"127.0.0.1:{cfg.ports.grpc_internal}", cfg.max_request_bytes, *tls
        )
    )
    ray.get(actor.ready.remote(), timeout=60)
    return actor
