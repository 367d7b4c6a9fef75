"""Pipe: two connected ends; what one sends, the other receives, in order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ._core import _client, _codec, _wire
from ._exceptions import ClosedResourceError, EndOfStream
from ._proxy import Proxy

__all__ = ("Connection", "ConnectionStatistics", "Pipe")

T = TypeVar("T")


@dataclass(frozen=True)
class ConnectionStatistics:
    """Attributes: pending (messages waiting here), waiting_receivers, peer_closed."""

    pending: int
    waiting_receivers: int
    peer_closed: bool


class Connection(Proxy, Generic[T]):
    """One end of a :func:`Pipe`.

    ``close()`` releases this process's handle on the end; once no process holds the end,
    the other end reads what was sent, then ``EndOfStream``. As with ``multiprocessing``,
    a process that hands an end to another and does not use it should close its own copy.
    """

    _kind = "connection"

    def _rebuilt(self) -> None:
        self._codec = _codec.ItemCodec(self._extra["type"])
        self._closed = False

    @property
    def sync(self) -> ConnectionSync[T]:
        """Blocking twins of the connection's methods (with ``timeout``)."""
        return ConnectionSync(self)

    def _check(self) -> None:
        if self._closed:
            raise ClosedResourceError("the connection is closed")

    async def send(self, obj: T) -> None:
        """Send ``obj`` to the other end (never waits: a pipe is unbounded)."""
        self._check()
        await self._endpoint.call(self._oid, _wire.OP_PUT, self._codec.encode(obj))

    async def recv(self) -> T:
        """Receive the next object.

        Raises:
            EndOfStream: the other end is closed and everything it sent was received.
        """
        self._check()
        blob = await self._endpoint.call(
            self._oid, _wire.OP_GET, undo=_client.Undo.put_back(self._oid)
        )
        return self._codec.decode(blob)  # type: ignore[no-any-return]

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send raw bytes (read them with ``recv_bytes``)."""
        self._check()
        await self._endpoint.call(self._oid, _wire.OP_PUT, bytes(data))

    async def recv_bytes(self) -> bytes:
        self._check()
        return await self._endpoint.call(
            self._oid, _wire.OP_GET, undo=_client.Undo.put_back(self._oid)
        )

    def close(self) -> None:
        """Release this process's handle on this end."""
        if not self._closed:
            self._closed = True
            self._close_handle()

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> ConnectionStatistics:
        self._check()
        return ConnectionStatistics(**self._stats())

    def __aiter__(self) -> Connection[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.recv()
        except EndOfStream:
            raise StopAsyncIteration from None

    def __reduce__(self) -> tuple[Any, ...]:
        self._check()
        return super().__reduce__()


class ConnectionSync(Generic[T]):
    """Blocking twins of a connection's methods (``conn.sync``)."""

    def __init__(self, conn: Connection[T]) -> None:
        self._conn = conn

    def send(self, obj: T) -> None:
        c = self._conn
        c._check()
        c._endpoint.call_sync(c._oid, _wire.OP_PUT, c._codec.encode(obj))

    def recv(self, timeout: float | None = None) -> T:
        c = self._conn
        c._check()
        blob = c._endpoint.call_sync(
            c._oid, _wire.OP_GET, b"", timeout, undo=_client.Undo.put_back(c._oid)
        )
        return c._codec.decode(blob)  # type: ignore[no-any-return]

    def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        c = self._conn
        c._check()
        c._endpoint.call_sync(c._oid, _wire.OP_PUT, bytes(data))

    def recv_bytes(self, timeout: float | None = None) -> bytes:
        c = self._conn
        c._check()
        return c._endpoint.call_sync(
            c._oid, _wire.OP_GET, b"", timeout, undo=_client.Undo.put_back(c._oid)
        )

    def close(self) -> None:
        self._conn.close()

    def __iter__(self) -> ConnectionSync[T]:
        return self

    def __next__(self) -> T:
        try:
            return self.recv()
        except EndOfStream:
            raise StopIteration from None


def Pipe(
    duplex: bool = True, *, type: Any = _codec.UNTYPED
) -> tuple[Connection[Any], Connection[Any]]:
    """Return two connected ends ``(a, b)``.

    With ``duplex=False``, ``a`` can only receive and ``b`` can only send (as
    ``multiprocessing.Pipe``). ``type`` makes both ends typed, as for :class:`Queue`.
    """
    endpoint = _client.default_endpoint()
    oids = endpoint.create("pipe", {"duplex": bool(duplex)})
    ends = []
    for oid in oids:
        conn: Connection[Any] = Connection.__new__(Connection)
        conn._bind(endpoint, oid, {"type": type})
        conn._rebuilt()
        ends.append(conn)
    return ends[0], ends[1]


for _cls in (Connection, ConnectionSync, ConnectionStatistics, Pipe):
    _cls.__module__ = "aioproc"
