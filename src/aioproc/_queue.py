"""Queue: a FIFO shared by processes, awaited in the event loop, with a blocking ``.sync``."""

from __future__ import annotations

import builtins
import contextlib
import functools
import weakref
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from ._core import _client, _codec, _wire
from ._exceptions import EndOfStream
from ._proxy import Proxy
from ._proxy import _release as _proxy_release

__all__ = ("Queue", "QueueStatistics")

T = TypeVar("T")


@dataclass(frozen=True)
class QueueStatistics:
    """A snapshot of a queue.

    Attributes:
        size: items put and not yet taken: those in the queue, and those ``prefetched``.
        maxsize: the bound given at creation (0: unbounded); it bounds ``size``.
        waiting_getters: tasks and processes blocked in ``get``.
        waiting_putters: tasks and processes blocked in ``put``.
        closed: whether ``close()`` was called.
        prefetched: items lent to consumer processes and not yet settled: in their
            buffers, or handed out by a ``get`` since their buffer last ran dry (see the
            class's "Consumers in other processes").
    """

    size: int
    maxsize: int
    waiting_getters: int
    waiting_putters: int
    closed: bool
    prefetched: int = 0


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

    Consumers in other processes. On an unbounded queue, a get in a process other than the
    hosting one takes from that process's buffer of the queue, and asks the host for a
    batch only when the buffer is empty: no round trip per item. The host *lends* a batch
    until the process *settles* it (``_client.Prefetch``, ``_objects.QueueState``):

    - a batch holds about what the process consumed in the last millisecond (1 at first,
      at most 256), so a slow consumer takes one item at a time and leaves the rest to
      others;
    - FIFO: batches are lent in queue order and the buffer is shared by the process's
      proxies of the queue;
    - never lost: unconsumed items go back to the front of the queue, in order, when a get
      is cancelled or times out, a proxy is released, a task or ``Process`` target returns,
      or (by the host) the process's connection closes;
    - at least once: items a get returned are settled when the buffer runs dry; if the
      process dies before that, they are delivered again;
    - ``qsize()`` counts items put and not yet taken, prefetched ones included
      (``statistics().prefetched``).

    In the hosting process, and on a bounded queue, a get takes one item from the queue
    itself: nothing is lent (on a bounded queue, lent items would keep a waiting producer
    out one message longer than a plain get does).
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
        endpoint = self._endpoint
        client = endpoint.client
        if client is not None:
            self._post = functools.partial(client.post, self._oid, _wire.OP_PUT)
        else:
            self._post = functools.partial(endpoint.post_item, self._oid)
        # Gets of an unbounded queue in another process than the hosting one take batches
        # into this process's buffer of the queue (see _client.Prefetch); its items go back
        # when this proxy is released, before its handle.
        self._prefetch: _client.Prefetch | None = None
        if client is not None and self._maxsize == 0:
            self._prefetch = prefetch = client.prefetch(self._oid)
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _release, prefetch, endpoint, self._oid)

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
        prefetch = self._prefetch
        if prefetch is not None:
            # Another process's queue: from this process's buffer, or a batch fetched now.
            blob = prefetch.take()
            if blob is None:
                blob = await prefetch.get()
        else:
            # The hosting process's fast path: an item is already there, take it.
            blob = self._endpoint.take_ready(self._oid)
        if blob is None:
            blob = await self._endpoint.call(
                self._oid, _wire.OP_GET, undo=_client.Undo.put_back(self._oid)
            )
        return self._codec.decode(blob)  # type: ignore[no-any-return]

    def get_nowait(self) -> T:
        """Return the next item or raise ``aioproc.WouldBlock`` (a ``queue.Empty``)."""
        prefetch = self._prefetch
        blob = prefetch.take() if prefetch is not None else None
        if blob is None:
            blob = self._endpoint.call_sync(self._oid, _wire.OP_GET_NOWAIT)
        return self._codec.decode(blob)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the queue for every process: no more puts; gets drain what is left."""
        self._endpoint.call_sync(self._oid, _wire.OP_CLOSE)

    def statistics(self) -> QueueStatistics:
        stats = self._stats()
        return QueueStatistics(**stats)

    def qsize(self) -> int:
        """Items put and not yet taken: queued, or prefetched by a consumer process."""
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


def _release(prefetch: _client.Prefetch, endpoint: _client.Endpoint, oid: int) -> None:
    """A queue proxy of a process that does not host it goes: its prefetched items first."""
    # Broad on purpose, as in a __del__ (see _proxy._release).
    with contextlib.suppress(Exception):
        prefetch.release()
    _proxy_release(endpoint, (oid,))


class QueueSync(Generic[T]):
    """Blocking twins of the queue's methods, for plain code (``queue.sync``)."""

    __slots__ = ("_queue",)

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
        prefetch = q._prefetch
        if prefetch is not None:
            return q._codec.decode(prefetch.get_sync(timeout))  # type: ignore[no-any-return]
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
