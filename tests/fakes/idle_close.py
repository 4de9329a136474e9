"""The network between an HTTP adapter and a fake broker served on loopback (``serve.py``), where
the broker closes kept-alive connections the client's pool still holds.

A server may close an idle keep-alive connection at any time (RFC 9112, 9.6). httpcore drops
such a connection before reusing it when the close has already arrived; the close that arrives
while the request is being written is what this reproduces, at two moments:

- ``close_idle()``: the server closed the connection before the request came. Writing the
  request's head fails (a broken pipe), and reading finds the connection closed: the broker never
  read the request.
- ``drop_after_sending()``: the request is written and the broker handles it, but the
  connection drops before its answer arrives: the broker acted on it.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable

import httpcore
import httpx


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self.closed_by_server = False
        self.drop_after_write = False
        self._dropped = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._dropped:
            # The broker handled the request; its answer is lost with the connection.
            self._dropped, self.closed_by_server = False, True
            await self._inner.read(max_bytes, timeout)
        if self.closed_by_server:
            return b""  # the server's close, as the socket reads it
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self.closed_by_server:
            raise httpcore.WriteError("[Errno 32] Broken pipe")
        await self._inner.write(buffer, timeout)
        if self.drop_after_write:
            self._dropped = True

    async def aclose(self) -> None:
        await self._inner.aclose()

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable" and self.closed_by_server:
            return False  # the close is on its way: the pool cannot see it yet
        return self._inner.get_extra_info(info)


class IdleClosingNetwork(httpcore.AsyncNetworkBackend):
    """Real loopback connections whose server side closes on the test's word."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()
        self.streams: list[_Stream] = []

    @property
    def connections(self) -> int:
        """Connections opened so far."""
        return len(self.streams)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = _Stream(await self._inner.connect_tcp(host, port, timeout, local_address, socket_options))
        self.streams.append(stream)
        return stream

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    def close_idle(self) -> None:
        """The server closes every connection open now, before any further request reaches it."""
        for stream in self.streams:
            stream.closed_by_server = True

    def drop_after_sending(self) -> None:
        """Every connection open now carries its next request, then drops without an answer."""
        for stream in self.streams:
            stream.drop_after_write = True

    def transport(self) -> httpx.AsyncHTTPTransport:
        """httpx's own transport (connection pool and all) over this network."""
        transport = httpx.AsyncHTTPTransport()
        # httpx takes no network backend of its own; its pool (httpcore) does.
        transport._pool._network_backend = self
        return transport
