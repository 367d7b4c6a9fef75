"""How a process reaches the hub that hosts its IPC objects (the hub itself is ``_hub``).

A proxy holds an :class:`Endpoint`. In the hosting process the endpoint calls the state
machines directly (an uncontended lock or a queue get costs no I/O at all); anywhere else
it goes through this process's one :class:`Client` connection to that hub::

    proxy ─▶ Endpoint ─┬─ hosting process: _LocalRequest ─▶ Hub.get(oid).handle(...)
                       │    (same thread as the hub's loop; or _ThreadRequest from another)
                       └─ other process:   _RemoteRequest ─▶ Client ── HubCall ──▶ Hub
                                                                   ◀── HubReply ──

Every operation is one :class:`_Request` with one lifecycle, whatever waits for it (a
future of the event loop, a blocking read of the connection, the hub's pump, an Event)::

    start() ─▶ answered? ─ yes ─────────────────────────────▶ result()
                  │ no
                  ▼
               wait ─────────────────── answered ───────────▶ result()
                  │ the caller gave up (cancelled, timed out)
                  ▼
               abandon(): not answered ─▶ withdraw()   (the object forgets the waiter)
                          granted ──────▶ give_back()  (``Undo``: the item goes back
                                                        first in line, the lock is released)

A withdrawal over a connection (``OP_CANCEL``) crosses a grant already on its way: the hub
answers every cancel after any grant for the same request, and a grant that arrives for a
withdrawn request is given back then.

Queue gets from here take batches (OP_GET_MANY) into a :class:`Prefetch` buffer shared by
this process's proxies of the queue; its gets take from the buffer and settle what they
took (OP_SETTLE) when it runs dry, and give back the rest whenever a get gives up, a proxy
goes or a task returns (:func:`flush_clients`)::

    get() ─▶ Prefetch.take() ─ item ─────────────────────────────────────▶ return it
                 │ empty                                   (dry: post SETTLE(done))
                 ▼
             _Fetch: GET_MANY(want, done) ── batch ─▶ buffer ─▶ take() again

Writes. Posts (puts on an unbounded queue, set(), handle bookkeeping) are appended to the
client's ``pending`` and written by a flusher thread, so a producer putting many small items
pays one syscall per batch, not per item. A request that wants an answer writes ``pending``
and itself at once, in order.

Invariants:
- A request is in ``Client.requests`` from its send until the hub's last word on it: its
  answer, or, once withdrawn, the answer to the cancel (a grant in between is given back).
- ``Client.send_lock`` guards ``pending`` (held for an append); ``Client.io_lock`` orders
  writes on the socket (held for a write); ``Client.lock`` lets one thread read at a time.
  A ``Prefetch.lock`` holder takes ``send_lock`` only (never ``io_lock``, never waits to
  read): a reader fills buffers under their lock while another thread may hold ``io_lock``.

Tunables:
- ``_FLUSH_AT`` (256 KiB): pending posts past this size are written by the posting thread
  itself rather than the flusher: bounds the memory a fast producer queues.
- ``_WINDOW`` (1 ms), ``_MAX_BATCH`` (256): the size of a consumer's batches (see
  :class:`Prefetch`).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import pickle
import select
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from .._exceptions import ClosedResourceError, SerializationError
from . import _fds, _hub, _objects, _role, _wire
from ._wire import (
    OP_ADOPT,
    OP_CANCEL,
    OP_CREATE,
    OP_DETACH,
    OP_GET_MANY,
    OP_GETFD,
    OP_PUT,
    OP_PUT_FRONT,
    OP_RELEASE,
    OP_SETTLE,
    OP_TRANSIT,
    STATUS_CANCELLED,
    STATUS_DROPPED,
    STATUS_ERROR,
    STATUS_OK,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._loop import Backend, Future

__all__ = (
    "HOST",
    "Client",
    "Endpoint",
    "Undo",
    "default_address",
    "default_endpoint",
    "flush_clients",
    "known_address",
)

_FLUSH_AT = 1 << 18
_READ = 1 << 18
_RECV_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_FD_SPACE = socket.CMSG_SPACE(8 * 4)


class Undo(NamedTuple):
    """How a grant is given back when its caller is gone: operation ``op`` on object
    ``oid``, with the granted value (an item goes back) or without (a lock is released)."""

    oid: int
    op: int
    with_value: bool = False

    @classmethod
    def put_back(cls, oid: int) -> Undo:
        """A get's item goes back to the front of queue or pipe end ``oid``."""
        return cls(oid, OP_PUT_FRONT, True)

    @classmethod
    def release(cls, oid: int) -> Undo:
        """An acquire of lock or semaphore ``oid`` is released."""
        return cls(oid, OP_RELEASE, False)

    def arg(self, value: bytes) -> bytes:
        return value if self.with_value else b""


class _Host:
    """The owner of what the hosting process itself holds."""

    pid = os.getpid()


HOST = _Host()


class _LocalReply:
    """The waiter the state machines see for an operation of the hosting process itself:
    it keeps the answer and wakes the caller (its future or Event; the pump just looks)."""

    __slots__ = ("error", "event", "future", "gone", "owner", "value")

    def __init__(self, event: threading.Event | None = None) -> None:
        self.owner = HOST
        self.future: Future | None = None  # set once the caller awaits
        self.event = event
        self.value: bytes | None = None
        self.error: BaseException | None = None
        self.gone = False  # withdrawn: refuse whatever comes

    def finished(self) -> bool:
        return self.value is not None or self.error is not None

    def resolve(self, value: bytes) -> bool:
        if self.gone or self.finished():
            return False
        future = self.future
        if future is not None and future.done():  # its task was cancelled
            return False
        self.value = value
        if future is not None:
            future.set_result(None)
        if self.event is not None:
            self.event.set()
        return True

    def fail(self, exc: BaseException) -> None:
        if self.gone or self.finished():
            return
        future = self.future
        if future is not None and future.done():
            return
        self.error = exc
        if future is not None:
            future.set_result(None)
        if self.event is not None:
            self.event.set()


# --- one request, from its start to its answer ---------------------------------------------


class _Request:
    """One operation on an object: the lifecycle of the module docstring, written once.

    Subclasses say how to start it, wait for it, withdraw it and give back a grant, on the
    hub of this process (:class:`_LocalRequest`, :class:`_ThreadRequest`) or over a
    connection (:class:`_RemoteRequest`).
    """

    __slots__ = ("undo",)

    def __init__(self, undo: Undo | None) -> None:
        self.undo = undo

    def start(self) -> None:
        raise NotImplementedError

    def answered(self) -> bool:
        raise NotImplementedError

    def granted(self) -> bytes | None:
        """The value of a successful answer (None before it, or after a failure)."""
        raise NotImplementedError

    def withdraw(self) -> None:
        """Ask the object to forget this unanswered request."""
        raise NotImplementedError

    def give_back(self, value: bytes) -> None:
        """Undo a grant of ``value`` whose caller is gone (see ``undo``)."""
        raise NotImplementedError

    def result(self) -> bytes:
        """The answer's value, or raise its error."""
        raise NotImplementedError

    def park(self) -> Future:
        """The future the event loop's caller awaits for the answer."""
        raise NotImplementedError

    def block(self, deadline: float | None) -> bool:
        """Wait in this thread until answered (True) or ``deadline`` (False)."""
        raise NotImplementedError

    def settle(self) -> None:
        """After waiting: write what the wait left for others (the hub's replies)."""

    def abandon(self) -> None:
        """The caller gave up: leave the object as if it had never asked."""
        if not self.answered():
            self.withdraw()
            return
        value = self.granted()
        if value is not None and self.undo is not None:
            self.give_back(value)

    async def run(self) -> bytes:
        self.start()
        if not self.answered():
            future = self.park()
            try:
                await future
            except BaseException:  # cancelled: withdraw or give back, then go on
                self.abandon()
                raise
            finally:
                self.settle()
        return self.result()

    def run_sync(self, timeout: float | None) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        self.start()
        try:
            if not self.answered() and not self.block(deadline):
                self.abandon()
                raise TimeoutError(f"timed out after {timeout} s")
        finally:
            self.settle()
        return self.result()


class _LocalRequest(_Request):
    """A request to this process's hub, from the thread that serves it."""

    __slots__ = ("arg", "hub", "oid", "op", "reply", "state")

    def __init__(
        self,
        hub: _hub.Hub,
        oid: int,
        op: int,
        arg: bytes,
        undo: Undo | None,
        event: threading.Event | None = None,
    ) -> None:
        self.undo = undo
        self.hub = hub
        self.oid = oid
        self.op = op
        self.arg = arg
        self.reply = _LocalReply(event)
        self.state: _objects.State | None = None  # once started

    def start(self) -> None:
        self.state = state = self.hub.get(self.oid)
        state.handle(self.op, self.arg, self.reply)
        # What this did for other processes (a lock released to a remote waiter by a
        # condition wait) must leave now, not once we are woken: they may be who wakes us.
        self.hub.flush()

    def answered(self) -> bool:
        reply = self.reply  # reply.finished(), inlined: this is every local call's path
        return reply.value is not None or reply.error is not None

    def granted(self) -> bytes | None:
        reply = self.reply
        return reply.value if reply.error is None else None

    def withdraw(self) -> None:
        self.reply.gone = True
        if self.state is not None:
            self.state.cancel(self.reply)

    def give_back(self, value: bytes) -> None:
        undo = self.undo
        assert undo is not None
        state = self.hub.objects.get(undo.oid)
        if state is not None:
            state.handle(undo.op, undo.arg(value), _LocalReply())

    def result(self) -> bytes:
        reply = self.reply
        if reply.error is not None:
            raise reply.error
        assert reply.value is not None
        return reply.value

    def park(self) -> Future:
        backend = self.hub.backend
        assert backend is not None
        self.reply.future = future = backend.create_future()
        return future

    def block(self, deadline: float | None) -> bool:
        self.hub.pump(self.reply.finished, deadline)
        return self.reply.finished()

    def settle(self) -> None:
        self.hub.flush()


class _ThreadRequest(_LocalRequest):
    """A blocking request to this process's hub from a thread other than the one whose
    event loop serves it: the operation runs in that loop, this thread waits on an Event."""

    __slots__ = ()

    def __init__(self, hub: _hub.Hub, oid: int, op: int, arg: bytes, undo: Undo | None) -> None:
        super().__init__(hub, oid, op, arg, undo, threading.Event())

    def _in_loop(self, fn: Callable[[], object]) -> None:
        backend = self.hub.backend
        assert backend is not None
        backend.call_soon_threadsafe(fn)

    def start(self) -> None:
        self._in_loop(self._start_in_loop)

    def _start_in_loop(self) -> None:
        try:
            super().start()
        except ClosedResourceError as exc:  # the object is gone
            self.reply.fail(exc)

    def block(self, deadline: float | None) -> bool:
        event = self.reply.event
        assert event is not None
        return event.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def abandon(self) -> None:
        # Runs after _start_in_loop: the loop runs its callbacks in order.
        self._in_loop(self._abandon_in_loop)

    def _abandon_in_loop(self) -> None:
        super().abandon()
        self.hub.flush()

    def settle(self) -> None:
        pass  # the hub is the loop thread's: it writes its replies there


class _RemoteRequest(_Request):
    """A request over this process's connection to a hub in another process."""

    __slots__ = (
        "arg",
        "client",
        "error",
        "future",
        "oid",
        "op",
        "rid",
        "status",
        "value",
        "withdrawn",
    )

    def __init__(
        self,
        client: Client,
        oid: int,
        op: int,
        arg: bytes,
        undo: Undo | None,
        future: Future | None = None,
    ) -> None:
        self.undo = undo
        self.client = client
        self.oid = oid
        self.op = op
        self.arg = arg
        self.future = future  # None: a blocking caller, which reads the answer itself
        self.rid = 0
        self.status: int | None = None  # a STATUS_*, once answered
        self.value = b""
        self.error: BaseException | None = None
        self.withdrawn = False  # cancelled by its caller: the hub's next word settles it

    def start(self) -> None:
        client = self.client
        self.rid = rid = next(client.rids)
        client.requests[rid] = self
        try:
            client.send(_wire.HubCall(rid, self.oid, self.op, self.arg))
        except BaseException:
            client.requests.pop(rid, None)
            raise

    def finish(self, status: int, value: bytes, error: BaseException | None = None) -> None:
        """The hub answered (or the connection is lost: ``error``)."""
        self.status = status
        self.value = value
        self.error = error
        future = self.future
        if future is not None and not future.done():
            future.set_result(None)

    def answered(self) -> bool:
        return self.status is not None

    def granted(self) -> bytes | None:
        return self.value if self.status == STATUS_OK else None

    def withdraw(self) -> None:
        client = self.client
        if client.lost:
            return  # nothing left to withdraw from
        self.withdrawn = True
        client.send(_wire.HubCall(0, 0, OP_CANCEL, self.rid.to_bytes(8, "little")))
        if self.future is None:
            # A blocking caller reads the hub's last word itself: with no event loop
            # reading this connection, a grant crossing the cancel would never be given
            # back otherwise.
            client.read_until_settled(self.rid)

    def give_back(self, value: bytes) -> None:
        undo = self.undo
        assert undo is not None
        self.client.post(undo.oid, undo.op, undo.arg(value))

    def result(self) -> bytes:
        if self.error is not None:
            raise self.error
        if self.status == STATUS_ERROR:
            raise pickle.loads(self.value)
        if self.status == STATUS_CANCELLED:
            raise ClosedResourceError("the request was cancelled")
        return self.value

    def park(self) -> Future:
        assert self.future is not None
        return self.future

    def block(self, deadline: float | None) -> bool:
        client = self.client
        with client.lock:
            while self.status is None:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                readable, _, _ = select.select([client.sock], [], [], remaining)
                if readable:
                    client.read_available()
                elif client.lost:
                    raise client.lost_error()
                else:
                    return False
        return True


# --- a consumer's prefetch buffer ------------------------------------------------------------


class _Fetch(_RemoteRequest):
    """An OP_GET_MANY: its batch goes into the process's buffer of that queue as it arrives
    (in the order the hub lent the batches), whichever caller then takes from it."""

    __slots__ = ("prefetch",)

    def __init__(self, prefetch: Prefetch, future: Future | None = None) -> None:
        # The undo is never applied as such (give_back below): a non-None undo makes a
        # grant that crosses our cancel come to give_back.
        super().__init__(prefetch.client, prefetch.oid, OP_GET_MANY, b"", _LENT, future)
        self.prefetch = prefetch

    def start(self) -> None:
        prefetch = self.prefetch
        client = self.client
        self.rid = rid = next(client.rids)
        client.requests[rid] = self
        try:
            # Counted and queued under the buffer's lock, so that what this request settles
            # ("done") reaches the hub in the order it was counted, before or after any
            # other settlement of this buffer; written outside it (see Client.enqueue).
            with prefetch.lock:
                self.arg = prefetch.ask()
                with client.send_lock:  # no flusher to wake: written just below
                    _wire.encode_into(
                        _wire.HubCall(rid, self.oid, OP_GET_MANY, self.arg), client.pending
                    )
            client.flush()
        except BaseException:
            client.requests.pop(rid, None)
            raise

    def finish(self, status: int, value: bytes, error: BaseException | None = None) -> None:
        if status == STATUS_OK:
            self.prefetch.fill(value)
            value = b""
        super().finish(status, value, error)

    def give_back(self, value: bytes) -> None:
        # A batch granted just before our cancel reached the hub: it is lent to us like
        # any other; it goes back with the rest of the buffer.
        self.prefetch.fill(value)
        self.prefetch.give_back()

    def abandon(self) -> None:
        if not self.answered():
            self.withdraw()
        # A get that gives up leaves nothing in this process that others could take.
        self.prefetch.give_back()


_LENT = Undo(0, OP_SETTLE)


class Prefetch:
    """A process's buffer of the items a queue (hosted elsewhere) lent it, and the size of
    its next batch.

    Every proxy of the queue in this process shares it (one buffer per queue and
    connection: the hub keeps what it lent per connection, in order, so the counts this
    buffer settles always refer to the front of that). A get takes from the buffer; an
    empty buffer asks the hub for a batch (OP_GET_MANY), which carries the count of items
    handed out since the last settlement.

    Batch size, so that no consumer sits on items another could take: the number of items
    this process handed out in the last ``_WINDOW`` seconds, measured on the last batch
    (from its arrival to the moment the buffer ran dry), at most double the last size and
    at most ``_MAX_BATCH``; 1 to begin with. A consumer that takes 10 ms per item therefore
    always asks for one, as a get without prefetch did.

    Only for unbounded queues: on a bounded one, lent items would hold the room a waiting
    producer needs until they are settled, one message later than a plain get frees it
    (measured: a child consuming a bounded queue at 0.6x the speed of plain gets), so its
    gets stay one request per item.

    Settling: when the buffer runs dry its handed-out items are settled at once (a post,
    which the next request's write usually carries), so a consumer that stops between
    batches leaves nothing counted against the queue; a get that is cancelled or times
    out, a proxy released and a process about to exit or to return a task's result give
    the rest back (OP_SETTLE with ``back``).

    Invariant: the hub's ``lent`` for this connection and queue is, in order, the
    ``handed`` items (handed out, not yet settled), then ``buffer``, then the batches on
    their way here; every count is taken and its message enqueued under ``lock``.

    Tunables:
    - ``_WINDOW`` (1 ms): the consumption a batch covers. Larger batches amortise the round
      trip (~50-100 µs between processes) over more items, and hold more items out of the
      other consumers' reach.
    - ``_MAX_BATCH`` (256): the largest batch whatever the rate: bounds the items a fast
      consumer holds and the size of a reply.
    """

    __slots__ = ("buffer", "client", "filled", "handed", "lock", "oid", "users", "want")

    def __init__(self, client: Client, oid: int) -> None:
        self.client = client
        self.oid = oid
        self.buffer: collections.deque[bytes] = collections.deque()
        self.handed = 0  # items taken from the buffer since the last settlement
        self.want = 1  # the size of the next batch
        self.filled: tuple[float, int] | None = None  # the last batch: arrival, size
        # Not reentrant: whoever holds it only appends to ``pending`` (see Invariants),
        # never writes or reads the connection, so a reader filling the buffer is never
        # the thread that holds it.
        self.lock = threading.Lock()
        self.users = 0  # proxies of this process that use it

    def take(self) -> bytes | None:
        """The next prefetched item, or None (the buffer is empty: fetch)."""
        with self.lock:
            buffer = self.buffer
            if not buffer:
                return None
            item = buffer.popleft()
            self.handed += 1
            if not buffer:
                self._settle(0)
            return item

    def _settle(self, back: int) -> None:
        handed, self.handed = self.handed, 0
        if (handed or back) and not self.client.lost:
            msg = _wire.HubCall(0, self.oid, OP_SETTLE, _wire.LEND.pack(handed, back))
            self.client.enqueue(msg)

    def ask(self) -> bytes:
        """The argument of the next OP_GET_MANY: the batch size, and what it settles."""
        filled = self.filled
        if filled is not None:
            self.filled = None
            since, size = filled
            spent = time.monotonic() - since
            rate_want = _MAX_BATCH if spent <= 0 else int(size * _WINDOW / spent)
            self.want = max(1, min(2 * self.want, rate_want, _MAX_BATCH))
        handed, self.handed = self.handed, 0
        return _wire.LEND.pack(self.want, handed)

    def fill(self, value: bytes) -> None:
        """A batch arrived (in the reader's thread)."""
        items = _wire.unpack_items(value)
        with self.lock:
            if self.users <= 0:
                return  # released: the hub took back what it had lent to us
            self.buffer.extend(items)
            self.filled = (time.monotonic(), len(items))

    def give_back(self) -> None:
        """Settle what was handed out and return the rest, first in line, in order."""
        with self.lock:
            back = len(self.buffer)
            self.buffer.clear()
            self.filled = None
            self._settle(back)

    def release(self) -> None:
        """One proxy of this process let go (before its handle's detach is posted)."""
        self.give_back()
        with self.lock:
            self.users -= 1
            if self.users <= 0:
                with self.client.send_lock:
                    if self.client.prefetches.get(self.oid) is self:
                        del self.client.prefetches[self.oid]

    async def get(self) -> bytes:
        """The next item: from the buffer, or from a batch fetched now."""
        client = self.client
        while True:
            item = self.take()
            if item is not None:
                return item
            backend = client._attach()
            await _Fetch(self, backend.create_future()).run()

    def get_sync(self, timeout: float | None) -> bytes:
        """The next item, blocking this thread (see :meth:`get`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        remaining = timeout
        while True:
            item = self.take()
            if item is not None:
                return item
            try:
                _Fetch(self).run_sync(remaining)
            except TimeoutError:
                raise TimeoutError(f"timed out after {timeout} s") from None
            if deadline is not None:  # another thread may have taken the batch: again
                remaining = max(0.0, deadline - time.monotonic())


_WINDOW = 1e-3
_MAX_BATCH = 256


# --- the connection ------------------------------------------------------------------------


class Client:
    """This process's connection to a hub in another process."""

    def __init__(self, address: str, key: bytes) -> None:
        self.address = address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(10.0)
            sock.connect(address)
            challenge = b""
            while len(challenge) < _hub.CHALLENGE:
                chunk = sock.recv(_hub.CHALLENGE - len(challenge))
                if not chunk:
                    raise ConnectionError("the hub closed the connection")
                challenge += chunk
            sock.sendall(_hub.digest(key, challenge) + os.getpid().to_bytes(8, "little"))
            if sock.recv(1) != b"\x01":
                raise ConnectionError("the hub refused the connection")
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        _fds.register_fds(self.fd)
        self.reader = _wire.FrameReader(decoder=_wire.hub_decoder)
        self.rids = itertools.count(1)
        self.requests: dict[int, _RemoteRequest] = {}  # rid -> request (see Invariants)
        self.post_errors: dict[int, BaseException] = {}  # oid -> why a post to it failed
        self.backend: Backend | None = None
        self.lock = threading.RLock()  # one reader at a time
        self.send_lock = threading.Lock()
        self.io_lock = threading.Lock()
        self.pending = bytearray()
        self.idle = True
        self.wake = threading.Event()
        self.flusher: threading.Thread | None = None
        self.fd_queue: collections.deque[int] = collections.deque()  # fds received, in order
        self.lost = False
        self.drop_reason: str | None = None  # why the hub dropped us, if it said so
        self.prefetches: dict[int, Prefetch] = {}  # queue oid -> this process's buffer

    # --- requests --------------------------------------------------------------------------

    async def call(self, oid: int, op: int, arg: bytes = b"", undo: Undo | None = None) -> bytes:
        backend = self._attach()
        return await _RemoteRequest(self, oid, op, arg, undo, backend.create_future()).run()

    def call_sync(
        self,
        oid: int,
        op: int,
        arg: bytes = b"",
        timeout: float | None = None,
        undo: Undo | None = None,
    ) -> bytes:
        return _RemoteRequest(self, oid, op, arg, undo).run_sync(timeout)

    def _attach(self) -> Backend:
        """Read this connection from the event loop running in this thread."""
        from ._loop import current_backend  # not at import: _loop imports asyncio

        backend = current_backend()
        if backend is not self.backend:
            if self.backend is not None:
                with contextlib.suppress(*_hub.LOOP_GONE):
                    self.backend.remove_reader(self.fd)
            self.backend = backend
            backend.add_reader(self.fd, self.read_available)
        return backend

    # --- writes ----------------------------------------------------------------------------

    def send(self, msg: _wire.HubCall) -> None:
        """Write the pending posts, then ``msg``, now."""
        with self.io_lock:
            with self.send_lock:
                _wire.encode_into(msg, self.pending)
                data, self.pending = self.pending, bytearray()
            self._write(data)

    def _write(self, data: bytes | bytearray) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.lost = True
            if self.backend is None and self.lock.acquire(blocking=False):
                # The hub closed the connection: its last words (why) may be waiting to be
                # read. Not with an event loop, whose thread reads (this may be another).
                try:
                    self.read_available()
                except SerializationError:
                    pass  # garbage after the reason, if any: the error below says enough
                finally:
                    self.lock.release()
            raise self.lost_error(f": {exc}") from exc

    def lost_error(self, detail: str = "") -> ClosedResourceError:
        """What calls raise once the connection is gone: the hub's reason, if it gave one."""
        if self.drop_reason is not None:
            return ClosedResourceError(
                f"the aioproc hub dropped this process's connection: {self.drop_reason}"
            )
        return ClosedResourceError(f"lost the connection to the aioproc hub{detail}")

    def post(self, oid: int, op: int, arg: bytes = b"") -> None:
        """Send an operation that needs no answer (a failure is raised by the next post)."""
        if self.post_errors or self.lost:
            self._raise_post_error(oid)
        if self.enqueue(_wire.HubCall(0, oid, op, arg)):
            self.flush()

    def enqueue(self, msg: _wire.HubCall) -> bool:
        """Add ``msg`` to the pending writes, for the flusher (or the next send) to write.

        Never writes itself: a caller may hold a lock that a reader needs (a prefetch
        buffer's). Whatever earlier posts to the same object said is not raised here.

        Returns:
            whether the pending writes grew past ``_FLUSH_AT`` (the caller may flush them).
        """
        with self.send_lock:
            _wire.encode_into(msg, self.pending)
            wake = self.idle
            self.idle = False
            large = len(self.pending) > _FLUSH_AT
        if wake:
            if self.flusher is None:
                self.flusher = threading.Thread(
                    target=self._flush_loop, name="aioproc-hub-flusher", daemon=True
                )
                self.flusher.start()
            self.wake.set()
        return large

    def _raise_post_error(self, oid: int) -> None:
        if self.lost:
            raise self.lost_error()
        error = self.post_errors.pop(oid, None)
        if error is not None:
            raise error

    def prefetch(self, oid: int) -> Prefetch:
        """This process's buffer of queue ``oid``, for one more proxy (see Prefetch.release)."""
        with self.send_lock:
            prefetch = self.prefetches.get(oid)
            if prefetch is None:
                prefetch = self.prefetches[oid] = Prefetch(self, oid)
            prefetch.users += 1
            return prefetch

    def give_back_prefetched(self) -> None:
        """Give back every item prefetched and not handed out (before this process exits, or
        a task's result leaves: the parent may look at the queue at once)."""
        for prefetch in list(self.prefetches.values()):
            prefetch.give_back()

    def flush(self) -> None:
        """Write every pending post now."""
        with self.io_lock:
            with self.send_lock:
                data, self.pending = self.pending, bytearray()
            if data:
                self._write(data)

    def _flush_loop(self) -> None:
        while not self.lost:
            with self.io_lock:
                with self.send_lock:
                    data = self.pending
                    if data:
                        self.pending = bytearray()
                    else:
                        self.idle = True
                        self.wake.clear()
                if data:
                    try:
                        self._write(data)
                    except ClosedResourceError:
                        return
                    self._read_errors()
                    continue
            self.wake.wait()

    # --- reads -----------------------------------------------------------------------------

    def _read_errors(self) -> None:
        """Take in what the hub said about our posts (a put to a closed queue), so the next
        post to that object raises. Only without an event loop, whose thread reads
        otherwise, and only if no blocking call is reading right now."""
        if self.backend is None and self.lock.acquire(blocking=False):
            try:
                self.read_available()
            finally:
                self.lock.release()

    def read_available(self) -> None:
        """Read and apply what the hub sent, without blocking."""
        while True:
            try:
                data, fds = _recv_with_fds(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if fds:
                self.fd_queue.extend(fds)
            if not data:
                self._lose()
                return
            for msg in self.reader.feed(data):
                if isinstance(msg, _wire.HubReply):
                    self._on_reply(msg)

    def read_until_settled(self, rid: int) -> None:
        """Block until the hub said its last word on request ``rid`` (see Invariants)."""
        with self.lock:
            while rid in self.requests:
                select.select([self.sock], [], [])
                self.read_available()

    def _lose(self) -> None:
        self.lost = True
        if self.backend is not None:
            with contextlib.suppress(*_hub.LOOP_GONE):
                self.backend.remove_reader(self.fd)
        error = self.lost_error()
        for rid, request in list(self.requests.items()):
            del self.requests[rid]
            request.finish(STATUS_ERROR, b"", error)

    def _on_reply(self, msg: _wire.HubReply) -> None:
        if msg.rid == 0:
            if msg.status == STATUS_DROPPED:
                self.drop_reason = msg.value.decode(errors="replace")
                return
            # A post failed; the next post to that object raises it.
            try:
                oid, error = pickle.loads(msg.value)
            # Broad on purpose: unpickling runs the exception class's own code.
            except Exception:
                return
            self.post_errors[oid] = error
            return
        request = self.requests.get(msg.rid)
        if request is None:
            return
        if request.withdrawn:
            if msg.status == STATUS_CANCELLED:
                del self.requests[msg.rid]
            elif msg.status == STATUS_OK and request.undo is not None:
                # Granted just before our cancel arrived: give it back.
                request.give_back(msg.value)
            return
        del self.requests[msg.rid]
        request.finish(msg.status, msg.value)


def _recv_with_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Non-blocking read that keeps any descriptors sent along (socket.recv_fds of
    Python 3.11 ignores its flags, so it would block)."""
    data, ancdata, _, _ = sock.recvmsg(_READ, _FD_SPACE, _RECV_FLAGS)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(
                int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True)
                for i in range(0, usable, 4)
            )
    return data, fds


# --- which hub, from here ------------------------------------------------------------------


class Endpoint:
    """How a proxy reaches its object: through the local hub or a client connection."""

    __slots__ = ("address", "client", "hub", "key")

    def __init__(self, address: str, key: bytes) -> None:
        self.address = address
        self.key = key
        local = _hub.hosted()
        if local is not None and local.address == address:
            self.hub: _hub.Hub | None = local
            self.client: Client | None = None
        else:
            self.hub = None
            client = _clients.get(address)
            if client is None or client.lost:
                client = _clients[address] = Client(address, key)
            self.client = client

    async def call(self, oid: int, op: int, arg: bytes = b"", undo: Undo | None = None) -> bytes:
        """Operation ``op`` on object ``oid``, awaited in the event loop.

        Args:
            undo: how to give back a grant whose caller was cancelled meanwhile.
        """
        hub = self.hub
        if hub is None:
            assert self.client is not None
            return await self.client.call(oid, op, arg, undo)
        hub.ensure_attached()
        return await _LocalRequest(hub, oid, op, arg, undo).run()

    def call_sync(
        self,
        oid: int,
        op: int,
        arg: bytes = b"",
        timeout: float | None = None,
        undo: Undo | None = None,
    ) -> bytes:
        """Operation ``op`` on object ``oid``, blocking this thread.

        Raises:
            TimeoutError: no answer within ``timeout`` seconds (the request is withdrawn,
                or its grant given back).
        """
        hub = self.hub
        if hub is None:
            assert self.client is not None
            return self.client.call_sync(oid, op, arg, timeout, undo)
        if hub.loop_thread not in (None, threading.get_ident()) and hub.backend is not None:
            return _ThreadRequest(hub, oid, op, arg, undo).run_sync(timeout)
        # Apply what other processes already sent first: a task whose result we just
        # saw has written its puts before its result, and a close() must come after them.
        hub.poll()
        return _LocalRequest(hub, oid, op, arg, undo).run_sync(timeout)

    def post(self, oid: int, op: int, arg: bytes = b"") -> None:
        """Operation ``op`` on object ``oid``, with no answer to wait for."""
        hub = self.hub
        if hub is None:
            assert self.client is not None
            self.client.post(oid, op, arg)
            return
        if not hub.handle_op(op, oid, arg):
            reply = _LocalReply()
            hub.get(oid).handle(op, arg, reply)
            if reply.error is not None:
                raise reply.error
        hub.flush()

    def detach(self, oid: int) -> None:
        """Let go of one of this process's handles on object ``oid``."""
        self.post(oid, OP_DETACH)

    def hand_over(self, oid: int) -> bytes:
        """A handle on ``oid`` for whoever unpickles what is being pickled now.

        The handle is held in transit under the returned token until the receiver
        :meth:`adopt` s it, so the object outlives its sender's own handle meanwhile.
        """
        if self.hub is not None:
            # Whoever receives this will connect: serve connections from this loop.
            self.hub.ensure_attached()
        token = os.urandom(8)
        self.post(oid, OP_TRANSIT, token)
        return token

    def adopt(self, oid: int, token: bytes) -> None:
        """Take over the handle on ``oid`` handed over under ``token``."""
        self.post(oid, OP_ADOPT, token)

    def post_item(self, oid: int, item: bytes) -> None:
        """Put ``item`` on unbounded queue ``oid``, waiting for no answer.

        In the hosting process, an item that nobody waits for is appended straight to the
        queue (no request, no reply object); anything else is an ordinary post.
        """
        hub = self.hub
        if hub is None or not hub.try_post(oid, item):
            self.post(oid, OP_PUT, item)

    def take_ready(self, oid: int) -> bytes | None:
        """In the hosting process, the next item of queue ``oid`` if one is there already
        (no request at all); else None: make the request."""
        hub = self.hub
        if hub is None or hub.backend is None:
            return None
        state = hub.objects.get(oid)
        if type(state) is not _objects.QueueState:
            return None
        item = state.try_get()
        if hub.dirty:  # a putter let in, in another process
            hub.flush()
        return item

    def get_fd(self, oid: int) -> int:
        """A file descriptor of this process for object ``oid`` (shared memory)."""
        hub = self.hub
        if hub is not None:
            state = hub.objects.get(oid)
            fd = getattr(state, "fd", None)
            if fd is None:
                raise ClosedResourceError("the object no longer exists")
            return os.dup(fd)
        client = self.client
        assert client is not None
        with client.lock:
            client.call_sync(oid, OP_GETFD)
            return client.fd_queue.popleft()

    def create(self, kind: str, params: dict[str, Any]) -> list[int]:
        """Create an object on this endpoint's hub; the caller holds one handle on each."""
        hub = self.hub
        spec = pickle.dumps((kind, params), 5)
        if hub is not None:
            hub.ensure_attached()
            return hub.create_from(spec)
        assert self.client is not None
        oids: list[int] = pickle.loads(self.client.call_sync(0, OP_CREATE, spec))
        return oids


_clients: dict[str, Client] = {}  # address -> this process's connection to that hub


def default_address() -> tuple[str, bytes]:
    """Where objects created here live: the parent's hub, or this process's own."""
    parent = _role.parent_hub()
    if parent is not None:
        return parent
    hub = _hub.local_hub()
    return hub.address, hub.key


def default_endpoint() -> Endpoint:
    """The endpoint of the hub where objects created here live (see default_address)."""
    return Endpoint(*default_address())


def known_address() -> tuple[str, bytes] | None:
    """The hub address this process would hand on, without creating a hub."""
    parent = _role.parent_hub()
    if parent is not None:
        return parent
    if _role.in_worker:
        return None  # a worker's own hub would not be served while it waits for tasks
    local = _hub.hosted()
    if local is not None:
        local.ensure_attached()  # children will connect: serve them from this loop
        return local.address, local.key
    return None


def flush_clients() -> None:
    """Write what this process posted and has not sent yet (before it exits)."""
    for client in list(_clients.values()):
        client.give_back_prefetched()
        with contextlib.suppress(ClosedResourceError):  # that hub is gone: nothing to do
            client.flush()


def _after_fork_in_child() -> None:
    _clients.clear()  # the parent's connections: never to be used from here


os.register_at_fork(after_in_child=_after_fork_in_child)
