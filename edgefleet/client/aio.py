"""The asyncio client (``grpc.aio``).

Its twin is ``client.Client``: both are thin loops over ``_common`` and ``_retry``, so they cannot drift.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import grpc

from edgefleet._proto import inference_pb2_grpc
from edgefleet.client._common import (
    PreparedCall,
    Settings,
    StreamAssembler,
    feedback_request,
    prepare_call,
    to_completion,
)
from edgefleet.client._retry import RetryPolicy
from edgefleet.client.errors import EdgefleetClientError, from_rpc_error
from edgefleet.client.types import Chunk, Completion


class AsyncClient:
    """An asyncio client of the edgefleet inference API; the twin of :class:`~edgefleet.client.Client`.

    The channel opens on the first call, inside the running event loop (a ``grpc.aio`` channel belongs
    to one loop), so the client can be built anywhere but must then be used from a single loop.

    Args:
        target: ``host:port`` of the Serve gRPC proxy.
        token: Bearer token sent as ``authorization`` metadata, if the gateway requires one.
        tls: Use TLS instead of a plaintext channel.
        root_certificates: PEM roots to trust with ``tls=True``; None means the system's.
        application: The Serve application to route to (``application`` metadata).
        max_retries: Retries after the first attempt, for ``UNAVAILABLE`` only.
        backoff_base_s: Backoff cap before the first retry, in s; doubles per retry, with jitter.
        backoff_max_s: Upper bound of the backoff cap, in s.
        default_timeout: Timeout in s for calls that pass none; None means no deadline.
        channel_options: Extra ``grpc`` channel options, as ``(key, value)`` pairs.

    Raises:
        ValueError: An option is invalid.

    Example:
        >>> import asyncio
        >>> from edgefleet.client import AsyncClient
        >>> async def main() -> None:
        ...     async with AsyncClient("127.0.0.1:9000") as c:
        ...         print((await c.generate("The capital of France is", max_new_tokens=8, timeout=2.0)).text)
        >>> asyncio.run(main())  # doctest: +SKIP
    """

    def __init__(
        self,
        target: str = "127.0.0.1:9000",
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        application: str = "edgefleet",
        max_retries: int = 3,
        backoff_base_s: float = 0.05,
        backoff_max_s: float = 1.0,
        default_timeout: float | None = None,
        channel_options: list[tuple[str, Any]] | None = None,
    ) -> None:
        self._settings = Settings(
            target=target,
            token=token,
            tls=tls,
            root_certificates=root_certificates,
            application=application,
            default_timeout=default_timeout,
            channel_options=tuple(channel_options or ()),
            policy=RetryPolicy(max_retries, backoff_base_s, backoff_max_s),
        )
        self._channel: grpc.aio.Channel | None = None
        self._stub: inference_pb2_grpc.InferenceServiceStub | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"AsyncClient({self._settings.target!r}, tls={self._settings.tls})"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled. Closing twice is harmless.

        Example:
            >>> import asyncio
            >>> from edgefleet.client import AsyncClient
            >>> asyncio.run(AsyncClient("127.0.0.1:9000").close())
        """
        if not self._closed:
            self._closed = True
            if self._channel is not None:
                await self._channel.close()

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
        priority: str = "normal",
        route: str = "auto",
        site: str = "",
        mode: str = "default",
        request_id: str | None = None,
    ) -> Completion:
        """Generate a whole completion.

        Args:
            prompt: The prompt, sent as a single user turn. Exactly one of ``prompt`` and ``messages``.
            messages: A chat, as ``{"role": ..., "content": ...}`` dicts (roles system/user/assistant).
            max_new_tokens: Most tokens to generate; 0 means the server's default.
            temperature: Sampling temperature; 0 means greedy.
            top_p: Nucleus sampling mass; 0 means 1.0.
            seed: Sampling seed, for reproducible sampled output.
            stop: Stop sequences (not included in the text).
            timeout: Overall budget in s, retries included. It is both the gRPC deadline and the SLA sent as
                ``deadline_ms``, which the router plans against. None means ``default_timeout``.
            priority: ``"normal"``, ``"low"`` or ``"high"``.
            route: ``"auto"`` (the router decides), ``"edge"`` or ``"cloud"``.
            site: The caller's locality hint, e.g. ``"site-a"``.
            mode: ``"strict"`` to be refused at once (``Overloaded``) when no target is predicted to
                meet the deadline, ``"best_effort"`` to be served anyway, ``"default"`` for the server's.
            request_id: Idempotency / tracing id; a random one if None.

        Returns:
            The completion, with where it ran and its timings.

        Raises:
            InvalidRequest: The arguments are invalid (nothing sent) or the server rejected them.
            DeadlineExceeded: ``timeout`` elapsed.
            Overloaded: The fleet had no capacity for it.
            Unauthenticated: The token is missing or not allowed.
            Unavailable: The server stayed unreachable through the retries.
            RPCError: Any other failure.

        Example:
            >>> from edgefleet.client import AsyncClient
            >>> async with AsyncClient("127.0.0.1:9000") as c:  # doctest: +SKIP
            ...     done = await c.generate("Hello", max_new_tokens=16, timeout=1.5, route="edge")
            ...     print(done.text, done.served_by, done.total_ms, done.sla_met)
        """
        call = prepare_call(
            self._settings,
            prompt,
            messages=messages,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
            timeout=timeout,
            priority=priority,
            route=route,
            site=site,
            mode=mode,
            request_id=request_id,
        )
        stub = self._open_stub()
        attempts = self._settings.attempts(call.timeout_s)
        while True:
            request, attempt_timeout = call.for_attempt(attempts)
            try:
                response = await stub.Generate(request, timeout=attempt_timeout, metadata=self._settings.metadata)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                delay = attempts.retry_delay_s(error)
                if delay is None:
                    raise error from rpc_error
            else:
                return to_completion(response)
            await asyncio.sleep(delay)

    async def feedback(
        self, completion: Completion | str, *, good: bool, correction: str | None = None, timeout: float | None = None
    ) -> str:
        """Rate an answer, optionally with the answer it should have been. The rating is kept on the
        edge node of the request's site (never at the cloud) and trains only that node's private updates.

        Args:
            completion: The answer (or its ``request_id``), within the server's ``feedback.keep_answers_s``.
            good: Whether the answer was good.
            correction: The right answer, if it was not.
            timeout: In s; None means ``default_timeout``.

        Returns:
            The id of the edge node that keeps the feedback.

        Raises:
            NotFound: No edge node keeps that answer (unknown, expired, or a cloud answer with no site).
            InvalidRequest: The arguments are invalid, e.g. a correction over the server's limit.
            Unauthenticated, Unavailable, RPCError: as for ``generate``.

        Example:
            >>> with Client("127.0.0.1:9000") as c:  # doctest: +SKIP
            ...     done = c.generate("What is the capital of France?", site="edge-1")
            ...     c.feedback(done, good=False, correction="Paris.")
            'edge-1'
        """
        request = feedback_request(completion, good, correction)
        stub = self._open_stub()
        timeout_s = self._settings.default_timeout if timeout is None else timeout
        attempts = self._settings.attempts(timeout_s)
        while True:
            try:
                response = await stub.Feedback(request, timeout=timeout_s, metadata=self._settings.metadata)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                delay = attempts.retry_delay_s(error)
                if delay is None:
                    raise error from rpc_error
            else:
                return response.node_id
            await asyncio.sleep(delay)

    def stream(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        timeout: float | None = None,
        priority: str = "normal",
        route: str = "auto",
        site: str = "",
        mode: str = "default",
        request_id: str | None = None,
    ) -> AsyncIterator[Chunk]:
        """Generate a completion as it is produced (a plain method returning an async iterator).

        Arguments are checked at once; the RPC starts, and ``timeout`` starts counting, when iteration
        begins. A connection failure is retried only until the first chunk arrives: after that, resending
        would repeat text the caller already has, so ``Unavailable`` is raised instead. Leaving the loop
        early cancels the RPC.

        Args:
            prompt: As for :meth:`generate`.
            messages: As for :meth:`generate`.
            max_new_tokens: As for :meth:`generate`.
            temperature: As for :meth:`generate`.
            top_p: As for :meth:`generate`.
            seed: As for :meth:`generate`.
            stop: As for :meth:`generate`.
            timeout: As for :meth:`generate`: the budget for the whole stream.
            priority: As for :meth:`generate`.
            route: As for :meth:`generate`.
            site: As for :meth:`generate`.
            mode: As for :meth:`generate`.
            request_id: As for :meth:`generate`.

        Returns:
            An async iterator of chunks; the last has ``final`` set and carries the whole :class:`Completion`.

        Raises:
            InvalidRequest: The arguments are invalid (raised by this call, before iterating).
            EdgefleetClientError: While iterating, the same errors as :meth:`generate`.

        Example:
            >>> from edgefleet.client import AsyncClient
            >>> async with AsyncClient("127.0.0.1:9000") as c:  # doctest: +SKIP
            ...     async for chunk in c.stream("Tell me a story", max_new_tokens=64, timeout=5.0):
            ...         print(chunk.text, end="", flush=True)
            ...     print("\\n", chunk.completion.served_by)
        """
        call = prepare_call(
            self._settings,
            prompt,
            messages=messages,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
            timeout=timeout,
            priority=priority,
            route=route,
            site=site,
            mode=mode,
            request_id=request_id,
        )
        self._check_open()
        return self._stream(call)

    async def _stream(self, call: PreparedCall) -> AsyncIterator[Chunk]:
        stub = self._open_stub()
        attempts = self._settings.attempts(call.timeout_s)
        while True:
            request, attempt_timeout = call.for_attempt(attempts)
            responses = stub.GenerateStream(request, timeout=attempt_timeout, metadata=self._settings.metadata)
            assembler = StreamAssembler()
            try:
                async for message in responses:
                    yield assembler.add(message)
                return
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
                delay = attempts.retry_delay_s(error, chunks_received=assembler.received)
                if delay is None:
                    raise error from rpc_error
            finally:
                responses.cancel()  # a no-op once the RPC is over; frees the server if the caller left early
            await asyncio.sleep(delay)

    def _check_open(self) -> None:
        if self._closed:
            raise EdgefleetClientError("the client is closed")

    def _open_stub(self) -> inference_pb2_grpc.InferenceServiceStub:
        self._check_open()
        if self._stub is None:
            options = self._settings.channel_options
            credentials = self._settings.credentials
            target = self._settings.target
            self._channel = (
                grpc.aio.secure_channel(target, credentials, options)
                if credentials is not None
                else grpc.aio.insecure_channel(target, options)
            )
            self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)
        return self._stub
