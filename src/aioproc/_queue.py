"""Queue: a FIFO shared by processes, awaited in the event loop, with a blocking ``.sync``."""

from __future__ import annotations

import builtins
import functools
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from ._core import _client, _codec, _wire
from ._exceptions import EndOfStream
from ._proxy import Proxy

__all__ = ("Queue", "QueueStatistics")

T = TypeVar("T")


@dataclass(frozen=True)
class QueueStatistics:
    """A snapshot of a queue.

    Attributes:
        size: items in the queue.
        maxsize: the bound given at creation (0: unbounded).
        waiting_getters: tasks and processes blocked in ``get``.
        waiting_putters: tasks and processes blocked in ``put``.
        closed: whether ``close()`` was called.
    """

    size: int
    maxsize: int
    waiting_getters: int
    waiting_putters: int
    closed: bool


class Queue(Proxy, Generic[T]):
    """A FIFO queue that any aioproc process can use.

    Args:
        maxsize: bound on the number of items; ``put`` waits while the queue is full.
            0 (the default) means unbounded.
        type: a msgspec-supported type (Struct, dataclass, union, ...). Items are then
            encoded with msgspec and validated when received: a message of the wrong shape
            raises :class:`aioproc.ValidationError` naming the field, and only that
            message is lost.

    Items from one producer arrive in the order they were put. ``close()`` ends the queue
    for everyone: puts then raise ``ClosedResourceError``, and getters receive what is
    left, then ``EndOfStream`` (an ``async for`` simply ends).
    """

    _kind = "queue"

    def __init__(self, maxsize: int = 0, *, type: Any = _codec.UNTYPED) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int; got {builtins.type(maxsize).__name__}")
        if maxsize < 0:
            raise ValueError(f"maxsize must be at least 0; got {maxsize}")
        if type is not _codec.UNTYPED:
            try:
                msgspec.msgpack.Decoder(type)
            except TypeError as exc:
                raise TypeError(f"type must be a msgspec-supported type: {exc}") from None
        self._create({"maxsize": maxsize}, {"maxsize": maxsize, "type": type})
        self._rebuilt()

    def _rebuilt(self) -> None:
        self._codec = _codec.ItemCodec(self._extra["type"])
        self._maxsize: int = self._extra["maxsize"]
        # Puts on an unbounded queue need no answer: the shortest route to the hub.
        client = self._endpoint.client
        poster = client.post if client is not None else self._endpoint.post
        self._post = functools.partial(poster, self._oid, _wire.OP_PUT)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def sync(self) -> QueueSync[T]:
        """Blocking twins of the queue's methods (with ``timeout``), for plain code."""
        # A new view each time: a view stored on the proxy would form a cycle and delay
        # releasing the proxy's handle until the next garbage collection.
        return QueueSync(self)

    async def put(self, item: T) -> None:
        """Put ``item``; wait while the queue is full."""
        blob = self._codec.encode(item)
        if self._maxsize == 0:
            self._post(blob)  # unbounded: nothing to wait for
        else:
            await self._endpoint.call(self._oid, _wire.OP_PUT, blob)

    def put_nowait(self, item: T) -> None:
        """Put ``item`` or raise ``aioproc.WouldBlock`` (a ``queue.Full``) if full."""
        blob = self._codec.encode(item)
        if self._maxsize == 0:
            self._post(blob)
        else:
            self._endpoint.call_sync(self._oid, _wire.OP_PUT_NOWAIT, blob)

    async def get(self) -> T:
        """Remove and return the next item; wait while the queue is empty.

        Raises:
            EndOfStream: the queue is closed and empty.
            ValidationError: (typed queue) the message does not match the type.
        """
        # Fast path in the hosting process: an item is already there, take it.
        blob = self._endpoint.take_ready(self._oid)
        if blob is None:
            blob = await self._endpoint.call(
                self._oid, _wire.OP_GET, undo=_client.Undo.put_back(self._oid)
            )
        return self._codec.decode(blob)  # type: ignore[no-any-return]

    def get_nowait(self) -> T:
        """Return the next item or raise ``aioproc.WouldBlock`` (a ``queue.Empty``)."""
        blob = self._endpoint.call_sync(self._oid, _wire.OP_GET_NOWAIT)
        return self._codec.decode(blob)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the queue for every process: no more puts; gets drain what is left."""
        self._endpoint.call_sync(self._oid, _wire.OP_CLOSE)

    def statistics(self) -> QueueStatistics:
        stats = self._stats()
        return QueueStatistics(**stats)

    def qsize(self) -> int:
        return self.statistics().size

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return 0 < self._maxsize <= self.qsize()

    def __aiter__(self) -> Queue[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except EndOfStream:
            raise StopAsyncIteration from None


class QueueSync(Generic[T]):
    """Blocking twins of the queue's methods, for plain code (``queue.sync``)."""

    def __init__(self, queue: Queue[T]) -> None:
        self._queue = queue

    def put(self, item: T, timeout: float | None = None) -> None:
        q = self._queue
        blob = q._codec.encode(item)
        if q._maxsize == 0:
            q._post(blob)
        else:
            q._endpoint.call_sync(q._oid, _wire.OP_PUT, blob, timeout)

    def get(self, timeout: float | None = None) -> T:
        q = self._queue
        blob = q._endpoint.call_sync(
            q._oid, _wire.OP_GET, b"", timeout, undo=_client.Undo.put_back(q._oid)
        )
        return q._codec.decode(blob)  # type: ignore[no-any-return]

    def put_nowait(self, item: T) -> None:
        self._queue.put_nowait(item)

    def get_nowait(self) -> T:
        return self._queue.get_nowait()

    def close(self) -> None:
        self._queue.close()

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()

    def full(self) -> bool:
        return self._queue.full()

    def __iter__(self) -> QueueSync[T]:
        return self

    def __next__(self) -> T:
        try:
            return self.get()
        except EndOfStream:
            raise StopIteration from None


for _cls in (Queue, QueueSync, QueueStatistics):
    _cls.__module__ = "aioproc"
