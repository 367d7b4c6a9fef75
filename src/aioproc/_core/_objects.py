"""The state of every IPC object, as the hub keeps it.

Each class is a small state machine driven by operations (``OP_*``, in ``_wire``) that
arrive from any process. An operation either completes at once or parks a *waiter*; a later
operation completes parked waiters. A waiter is anything with ``resolve(value) -> bool``
(False when nobody is left to receive the value: the next waiter is tried) and
``fail(exc)``; the hub supplies waiters for local tasks, blocking calls and remote requests
alike. Each class is registered under its ``kind``, the name a proxy creates it by
(:func:`create`).

Values are bytes: an item as its sender encoded it, or a small pickled result. Nothing here
does I/O or knows about event loops.

Invariants:
- A queue with waiting getters holds no item; a queue with waiting putters is full.
- A queue's ``n_lent`` is the number of items in its ``lent`` (per owner, in the order they
  were lent); ``full()`` and ``size`` count them with the queued items. An item is queued,
  lent to exactly one owner, or gone (handed to a get of the hosting process, settled).
- A lock is held by at most one owner; ``owner_died`` is set only while the lock is free.
- A cancelled waiter is removed before anything else happens to the object, so a value is
  never handed to a waiter that is gone (a value granted just before the cancellation is
  returned by the canceller: see ``_client``).
"""

from __future__ import annotations

import collections
import os
import pickle
import types
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .._exceptions import (
    BrokenBarrierError,
    ClosedResourceError,
    EndOfStream,
    LockOwnerDiedError,
    QueueEmpty,
    QueueFull,
    WouldBlock,
)
from . import _codec
from ._wire import (
    LEND,
    OP_ABORT,
    OP_ACQUIRE,
    OP_BARRIER_WAIT,
    OP_CLEAR,
    OP_CLOSE,
    OP_COND_WAIT,
    OP_GET,
    OP_GET_MANY,
    OP_GET_NOWAIT,
    OP_METHOD,
    OP_NOTIFY,
    OP_PUT,
    OP_PUT_FRONT,
    OP_PUT_NOWAIT,
    OP_RELEASE,
    OP_RESET,
    OP_SET,
    OP_SETTLE,
    OP_STATS,
    OP_TRY_ACQUIRE,
    OP_WAIT,
    pack_items,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

OK = b""
TRUE = b"\x01"
FALSE = b"\x00"


class Waiter(Protocol):
    @property
    def owner(self) -> object: ...

    def resolve(self, value: bytes) -> bool: ...
    def fail(self, exc: BaseException) -> None: ...


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, 5)


def _give(waiters: collections.deque[Any], value: bytes) -> bool:
    """Hand ``value`` to the first waiter still there."""
    while waiters:
        if waiters.popleft().resolve(value):
            return True
    return False


class State:
    """Base: an object's handles (processes using it) and the waiters it parks."""

    kind: ClassVar[str] = "object"

    def __init__(self) -> None:
        self.handles = 0
        self.oid = 0  # its id at the hub (set when the hub takes it in)

    @classmethod
    def create(cls, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
        """The states a proxy's creation request makes (``objects``: those already hosted)."""
        raise NotImplementedError

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        raise NotImplementedError

    def cancel(self, waiter: Waiter) -> None:
        """Forget a waiter that went away (cancelled, timed out, or its process died)."""

    def owner_gone(self, owner: object) -> None:
        """``owner`` (a process) is gone: its connection was lost."""

    def handles_gone(self, owner: object) -> None:
        """``owner`` (a process) let go of its last handle on this object; it lives on."""

    def stats(self) -> dict[str, Any]:
        return {}

    def release(self) -> list[State]:
        """The last handle is gone: free what the object holds.

        Returns:
            the objects the hub forgets now: this one, as a rule.
        """
        return [self]

    def unsupported(self, op: int, waiter: Waiter) -> None:
        waiter.fail(ValueError(f"operation {op} is not supported by a {self.kind}"))


def _remove(waiters: collections.deque[Any], waiter: Waiter) -> None:
    for index, item in enumerate(waiters):
        if (
            item is waiter
            or (isinstance(item, tuple) and item[0] is waiter)
            or (type(item) is _Lender and item.waiter is waiter)
        ):
            del waiters[index]
            return


class _Lender:
    """A parked OP_GET_MANY: an item put meanwhile is lent to its process, as a batch of one."""

    __slots__ = ("owner", "state", "waiter")

    def __init__(self, waiter: Waiter, state: QueueState) -> None:
        self.waiter = waiter
        self.owner = waiter.owner
        self.state = state

    def resolve(self, value: bytes) -> bool:
        if self.waiter.resolve(pack_items([value])):
            self.state.lend(self.owner, [value])
            return True
        return False

    def fail(self, exc: BaseException) -> None:
        self.waiter.fail(exc)


class QueueState(State):
    """A FIFO queue, and the items it has lent to consumer processes.

    A get from another process than the hosting one (OP_GET_MANY) takes a *batch* of items,
    which the queue *lends* to that process (``lent[owner]``, in order) until the process
    *settles* them (OP_SETTLE, or the ``done`` count of its next OP_GET_MANY): the first
    ``done`` were handed out by its ``get()`` and are gone; ``back`` more come back to the
    front of the queue, in order (a get cancelled or timed out, a handle closed). Whatever is
    still lent to a process when its connection is lost (it died) or its last handle on the
    queue goes also comes back to the front: an item is never lost, and one that a process
    had handed out but not yet settled when it died is delivered again (at least once).

    Counting: ``size`` (qsize) and the ``maxsize`` bound count the items queued *and* those
    lent and not yet settled, so a bounded queue would keep its backpressure whoever
    prefetched (aioproc's clients ask for batches from unbounded queues only: see
    ``_client.Prefetch``).
    """

    kind = "queue"

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize
        self.items: collections.deque[bytes] = collections.deque()
        self.getters: collections.deque[Waiter] = collections.deque()
        self.putters: collections.deque[tuple[Waiter, bytes]] = collections.deque()
        self.lent: dict[object, collections.deque[bytes]] = {}  # owner -> its items, in order
        self.n_lent = 0  # the sum of len(lent[owner])
        self.closed = False

    @classmethod
    def create(cls, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
        return [cls(params["maxsize"])]

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self.items) + self.n_lent

    def try_post(self, item: bytes) -> bool:
        """Append ``item`` if that is all a put would do (room, nobody waiting, open).

        The hub's fast path for the bulk of queue traffic, posts from other processes.
        """
        if self.getters or self.closed or self.full():
            return False
        self.items.append(item)
        return True

    def try_get(self) -> bytes | None:
        """Take the next item if one is there, letting in a waiting putter; else None.

        The fast path of a get in the hosting process: no waiter, no request.
        """
        if not self.items:
            return None
        item = self.items.popleft()
        if self.putters:
            self.admit()
        return item

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        if op == OP_PUT or op == OP_PUT_NOWAIT:
            if self.closed:
                waiter.fail(ClosedResourceError("the queue is closed"))
            elif not self.full():
                if not _give(self.getters, arg):
                    self.items.append(arg)
                waiter.resolve(OK)
            elif op == OP_PUT_NOWAIT:
                waiter.fail(QueueFull("the queue is full"))
            else:
                self.putters.append((waiter, arg))
        elif op == OP_GET_MANY:
            want, done = LEND.unpack(arg)
            owner = waiter.owner
            if done:
                self.settle(owner, done, 0)
            if self.items:
                items = self.items
                batch = [items.popleft() for _ in range(min(max(want, 1), len(items)))]
                if waiter.resolve(pack_items(batch)):
                    self.lend(owner, batch)
                else:
                    items.extendleft(reversed(batch))
            elif self.closed:
                waiter.fail(EndOfStream())
            else:
                self.getters.append(_Lender(waiter, self))
        elif op == OP_SETTLE:
            done, back = LEND.unpack(arg)
            self.settle(waiter.owner, done, back)
            waiter.resolve(OK)
        elif op == OP_GET or op == OP_GET_NOWAIT:
            if self.items:
                item = self.items.popleft()
                if waiter.resolve(item):
                    self.admit()
                else:
                    self.items.appendleft(item)
            elif self.closed:
                waiter.fail(EndOfStream())
            elif op == OP_GET_NOWAIT:
                waiter.fail(QueueEmpty("the queue is empty"))
            else:
                self.getters.append(waiter)
        elif op == OP_PUT_FRONT:
            # A get that was cancelled after its item was granted gives it back, first in
            # line, so that no item is lost and the order is kept.
            if not _give(self.getters, arg):
                self.items.appendleft(arg)
            waiter.resolve(OK)
        elif op == OP_CLOSE:
            self.closed = True
            while self.getters:  # waiting getters mean an empty queue: they are done
                self.getters.popleft().fail(EndOfStream())
            while self.putters:
                self.putters.popleft()[0].fail(ClosedResourceError("the queue is closed"))
            waiter.resolve(OK)
        elif op == OP_STATS:
            waiter.resolve(dumps(self.stats()))
        else:
            self.unsupported(op, waiter)

    def lend(self, owner: object, batch: list[bytes]) -> None:
        """Record ``batch`` (taken off the queue) as lent to ``owner``, after the others."""
        lent = self.lent.get(owner)
        if lent is None:
            lent = self.lent[owner] = collections.deque()
        lent.extend(batch)
        self.n_lent += len(batch)

    def settle(self, owner: object, done: int, back: int) -> None:
        """Of the items lent to ``owner``: the first ``done`` are gone, the next ``back``
        return to the front of the queue in their order (counts past what is lent are
        ignored: the owner cannot know of a return the hub made on its own, see
        :meth:`handles_gone`)."""
        lent = self.lent.get(owner)
        if lent is None:
            return
        done = min(done, len(lent))
        for _ in range(done):
            lent.popleft()
        back = min(back, len(lent))
        if back:
            self.items.extendleft(reversed([lent.popleft() for _ in range(back)]))
        self.n_lent -= done + back
        if not lent:
            del self.lent[owner]
        self.admit()

    def admit(self) -> None:
        while self.putters and not self.full():
            putter, item = self.putters.popleft()
            if putter.resolve(OK):
                self.items.append(item)
        # Items back from a consumer, or let in while a getter waited (the room was held by
        # lent items): the getters come first.
        while self.getters and self.items:
            item = self.items.popleft()
            if not _give(self.getters, item):
                self.items.appendleft(item)

    def owner_gone(self, owner: object) -> None:
        """A process is gone: what was lent to it comes back, first in line and in order."""
        self.handles_gone(owner)

    def handles_gone(self, owner: object) -> None:
        lent = self.lent.pop(owner, None)
        if lent:
            self.n_lent -= len(lent)
            self.items.extendleft(reversed(lent))
            self.admit()

    def cancel(self, waiter: Waiter) -> None:
        _remove(self.getters, waiter)
        _remove(self.putters, waiter)

    def stats(self) -> dict[str, Any]:
        return {
            "size": len(self.items) + self.n_lent,
            "maxsize": self.maxsize,
            "waiting_getters": len(self.getters),
            "waiting_putters": len(self.putters),
            "closed": self.closed,
            "prefetched": self.n_lent,
        }


class LockState(State):
    """A lock; with ``value`` > 1 (or ``bounded``) the same machine is a semaphore."""

    kind = "lock"
    semaphore = False  # a semaphore may be released by anyone, and has no "owner died"

    def __init__(self, value: int = 1, *, bounded: bool = False):
        super().__init__()
        self.value = value
        self.initial = value
        self.bounded = bounded
        self.owners: collections.Counter[object] = collections.Counter()
        self.waiters: collections.deque[Waiter] = collections.deque()
        self.owner_died = False

    @classmethod
    def create(cls, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
        return [cls(1)]

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        if op == OP_ACQUIRE or op == OP_TRY_ACQUIRE:
            if self.value > 0 and not self.waiters:
                self._grant(waiter, TRUE)
            elif op == OP_TRY_ACQUIRE:
                waiter.resolve(FALSE)
            else:
                self.waiters.append(waiter)
        elif op == OP_RELEASE:
            if not self.semaphore and self.value > 0:
                waiter.fail(RuntimeError("release of an unlocked lock"))
                return
            if self.bounded and self.value >= self.initial:
                waiter.fail(ValueError("semaphore released too many times"))
                return
            owner = waiter.owner
            if self.owners[owner] > 0:
                self.owners[owner] -= 1
            else:
                # Released by another process than the one that acquired: allowed, as in
                # multiprocessing; take it from whoever holds it.
                for holder, count in self.owners.items():
                    if count > 0:
                        self.owners[holder] -= 1
                        break
            self.value += 1
            waiter.resolve(OK)
            self._wake()
        elif op == OP_STATS:
            waiter.resolve(dumps(self.stats()))
        else:
            self.unsupported(op, waiter)

    def _grant(self, waiter: Waiter, value: bytes) -> None:
        if self.owner_died and not self.semaphore:
            self.owner_died = False
            waiter.fail(LockOwnerDiedError("the process holding the lock died; it is free now"))
            return
        if waiter.resolve(value):
            self.value -= 1
            self.owners[waiter.owner] += 1

    def _wake(self) -> None:
        while self.value > 0 and self.waiters:
            self._grant(self.waiters.popleft(), TRUE)

    def cancel(self, waiter: Waiter) -> None:
        _remove(self.waiters, waiter)

    def owner_gone(self, owner: object) -> None:
        held = self.owners.pop(owner, 0)
        if held:
            self.value += held
            if not self.semaphore:
                self.owner_died = True
            self._wake()

    def stats(self) -> dict[str, Any]:
        if self.semaphore:
            return {"value": self.value, "waiters": len(self.waiters)}
        owner = next((o for o, n in self.owners.items() if n > 0), None)
        return {
            "locked": self.value == 0,
            "owner_pid": getattr(owner, "pid", None),
            "waiters": len(self.waiters),
        }


class SemaphoreState(LockState):
    kind = "semaphore"
    semaphore = True

    @classmethod
    def create(cls, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
        return [cls(params["value"], bounded=params["bounded"])]


class EventState(State):
    kind = "event"

    def __init__(self) -> None:
        super().__init__()
        self.flag = False
        self.waiters: collections.deque[Waiter] = collections.deque()

    @classmethod
    def create(cls, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
        return [cls()]

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        if op == OP_SET:
            self.flag = True
            while self.waiters:
                self.waiters.popleft().resolve(TRUE)
            waiter.resolve(OK)
        elif op == OP_CLEAR:
            self.flag = False
            waiter.resolve(OK)
        elif op == OP_WAIT:
            if self.flag:
                waiter.resolve(TRUE)
            else:
                self.waiters.append(waiter)
        elif op == OP_STATS:
            waiter.resolve(dumps(self.stats()))
        else:
            self.unsupported(op, waiter)

    def cancel(self, waiter: Waiter) -> None:
        _remove(self.waiters, waiter)

    def stats(self) -> dict[str, Any]:
        return {"is_set": self.flag, "waiters": len(self.waiters)}


class _Reacquire:
    """A condition waiter once notified: it waits for the lock, then answers."""

    def __init__(self, waiter: Waiter) -> None:
        self.waiter = waiter
        self.owner = waiter.owner

    def resolve(self, value: bytes) -> bool:
        return self.waiter.resolve(value)

    def fail(self, exc: BaseException) -> None:
        self.waiter.fail(exc)


class ConditionState(State):
    kind = "condition"

    def __init__(self, lock: LockState) -> None:
        super().__init__()
        self.lock = lock
        self.waiters: collections.deque[Waiter] = collections.deque()

    @classmethod
    def create(cls, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
        lock = objects.get(params["lock"])
        if not isinstance(lock, LockState):
            raise ClosedResourceError("the condition's lock no longer exists")
        return [cls(lock)]

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        lock = self.lock
        if op == OP_COND_WAIT:
            if lock.owners[waiter.owner] <= 0:
                waiter.fail(RuntimeError("cannot wait on an un-acquired lock"))
                return
            # Atomically: release the lock, join the waiters.
            lock.owners[waiter.owner] -= 1
            lock.value += 1
            self.waiters.append(waiter)
            lock._wake()
        elif op == OP_NOTIFY:
            n = int.from_bytes(arg, "little") if arg else 1
            while n > 0 and self.waiters:
                # A notified waiter must get the lock back before wait() returns.
                lock.handle(OP_ACQUIRE, b"", _Reacquire(self.waiters.popleft()))
                n -= 1
            waiter.resolve(OK)
        elif op == OP_STATS:
            waiter.resolve(dumps({"waiters": len(self.waiters)}))
        else:
            self.unsupported(op, waiter)

    def cancel(self, waiter: Waiter) -> None:
        _remove(self.waiters, waiter)
        for item in list(self.lock.waiters):
            if isinstance(item, _Reacquire) and item.waiter is waiter:
                self.lock.waiters.remove(item)


class BarrierState(State):
    kind = "barrier"

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.parties = parties
        self.waiters: list[Waiter] = []
        self.broken = False

    @classmethod
    def create(cls, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
        return [cls(params["parties"])]

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        if op == OP_BARRIER_WAIT:
            if self.broken:
                waiter.fail(BrokenBarrierError("the barrier is broken"))
                return
            self.waiters.append(waiter)
            if len(self.waiters) == self.parties:
                waiters, self.waiters = self.waiters, []
                for index, w in enumerate(waiters):
                    w.resolve(index.to_bytes(4, "little"))
        elif op == OP_ABORT or op == OP_RESET:
            self.broken = op == OP_ABORT
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                w.fail(BrokenBarrierError("the barrier was aborted or reset"))
            waiter.resolve(OK)
        elif op == OP_STATS:
            waiter.resolve(
                dumps(
                    {"parties": self.parties, "n_waiting": len(self.waiters), "broken": self.broken}
                )
            )
        else:
            self.unsupported(op, waiter)

    def cancel(self, waiter: Waiter) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)


class PipeEndState(State):
    """One end of a Pipe: what the other end sent to it, and who waits to read it."""

    kind = "pipe"  # created in pairs: a pipe is its two ends

    def __init__(self, readable: bool, writable: bool) -> None:
        super().__init__()
        self.readable = readable
        self.writable = writable
        self.peer: PipeEndState | None = None
        self.inbox: collections.deque[bytes] = collections.deque()
        self.getters: collections.deque[Waiter] = collections.deque()
        self.closed = False

    @classmethod
    def create(cls, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
        duplex = params["duplex"]
        a = cls(readable=True, writable=duplex)
        b = cls(readable=duplex, writable=True)
        a.peer, b.peer = b, a
        return [a, b]

    def release(self) -> list[State]:
        """The last handle of this end is gone: the peer reads what is left, then EOF.

        An end outlives its handles while its peer is open (the peer's puts and gets look
        at it); both are forgotten together, once neither has a handle.
        """
        if not self.closed:
            self.closed = True
            self.inbox.clear()
            peer = self.peer
            if peer is not None:
                while peer.getters:
                    peer.getters.popleft().fail(EndOfStream())
        peer = self.peer
        if peer is not None and peer.closed:
            return [self, peer]
        return []

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        peer = self.peer
        assert peer is not None
        if op == OP_PUT:
            if not self.writable:
                waiter.fail(OSError("connection is read-only"))
            elif peer.closed:
                waiter.fail(BrokenPipeError("the other end of the pipe is closed"))
            else:
                if not _give(peer.getters, arg):
                    peer.inbox.append(arg)
                waiter.resolve(OK)
        elif op == OP_GET or op == OP_GET_NOWAIT:
            if not self.readable:
                waiter.fail(OSError("connection is write-only"))
            elif self.inbox:
                item = self.inbox.popleft()
                if not waiter.resolve(item):
                    self.inbox.appendleft(item)
            elif peer.closed:
                waiter.fail(EndOfStream())
            elif op == OP_GET_NOWAIT:
                waiter.fail(WouldBlock("nothing to receive yet"))
            else:
                self.getters.append(waiter)
        elif op == OP_PUT_FRONT:
            if not _give(self.getters, arg):
                self.inbox.appendleft(arg)
            waiter.resolve(OK)
        elif op == OP_STATS:
            waiter.resolve(dumps(self.stats()))
        else:
            self.unsupported(op, waiter)

    def cancel(self, waiter: Waiter) -> None:
        _remove(self.getters, waiter)

    def stats(self) -> dict[str, Any]:
        return {
            "pending": len(self.inbox),
            "waiting_receivers": len(self.getters),
            "peer_closed": self.peer is None or self.peer.closed,
        }


class SharedMemoryState(State):
    """A block of shared memory: an anonymous memory file (``memfd``).

    It has no name anywhere (nothing in ``/dev/shm`` to leak, nothing another user could
    open); processes receive its descriptor from the hub. The hub closes its descriptor
    when the last handle goes; the memory itself is freed by the kernel once every process
    has unmapped it, crash or not.
    """

    kind = "shm"

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.fd: int | None = os.memfd_create("aioproc", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, max(size, 1))

    @classmethod
    def create(cls, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
        return [cls(params["size"])]

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        if op == OP_STATS:
            waiter.resolve(dumps({"size": self.size}))
        else:
            self.unsupported(op, waiter)

    def release(self) -> list[State]:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return [self]


_ALLOWED: dict[str, frozenset[str]] = {
    "dict": frozenset(
        {
            "__contains__",
            "__delitem__",
            "__getitem__",
            "__len__",
            "__setitem__",
            "clear",
            "copy",
            "get",
            "items",
            "keys",
            "pop",
            "popitem",
            "setdefault",
            "update",
            "values",
        }
    ),
    "list": frozenset(
        {
            "__contains__",
            "__delitem__",
            "__getitem__",
            "__len__",
            "__setitem__",
            "append",
            "clear",
            "copy",
            "count",
            "extend",
            "index",
            "insert",
            "pop",
            "remove",
            "reverse",
            "sort",
        }
    ),
    "namespace": frozenset({"__getattr__", "__setattr__", "__delattr__", "copy"}),
}


class ContainerState(State):
    """A dict, list or namespace held by the hub; processes call its methods.

    Arguments and results travel pickled, so every caller works on copies, as with a
    ``multiprocessing`` manager; an exception raised by the method (a KeyError, an
    IndexError...) is sent back to the caller as itself.
    """

    def __init__(self, initial: Any) -> None:
        super().__init__()
        self.allowed = _ALLOWED[self.kind]
        self.obj: Any = self.build(initial)

    @staticmethod
    def build(initial: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def create(cls, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
        return [cls(params.get("initial"))]

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        if op == OP_STATS:
            waiter.resolve(dumps({"kind": self.kind}))
            return
        if op != OP_METHOD:
            self.unsupported(op, waiter)
            return
        try:
            method, args, kwargs = pickle.loads(arg)
            if method not in self.allowed:
                raise AttributeError(f"a managed {self.kind} has no method {method!r}")
            result = self.call(method, args, kwargs)
            value = _codec.dumps(result)
        # Broad on purpose: the method ran on a user's values (their __eq__, __hash__,
        # __reduce__...); whatever it raised goes back to the caller as itself.
        except Exception as exc:
            waiter.fail(exc)
            return
        waiter.resolve(value)

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = getattr(self.obj, method)(*args, **kwargs)
        if method in ("keys", "values", "items"):
            return list(result)
        return result


class DictState(ContainerState):
    kind = "dict"

    @staticmethod
    def build(initial: Any) -> Any:
        return dict(initial or {})


class ListState(ContainerState):
    kind = "list"

    @staticmethod
    def build(initial: Any) -> Any:
        return list(initial or [])


class NamespaceState(ContainerState):
    kind = "namespace"

    @staticmethod
    def build(initial: Any) -> Any:
        return types.SimpleNamespace(**(initial or {}))

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        obj = self.obj
        if method == "__getattr__":
            return getattr(obj, *args)
        if method == "__setattr__":
            return setattr(obj, *args)
        if method == "__delattr__":
            return delattr(obj, *args)
        return dict(vars(obj))


#: Every kind of object, by the name a proxy creates it by.
KINDS: dict[str, type[State]] = {
    cls.kind: cls
    for cls in (
        QueueState,
        LockState,
        SemaphoreState,
        EventState,
        ConditionState,
        BarrierState,
        PipeEndState,
        SharedMemoryState,
        DictState,
        ListState,
        NamespaceState,
    )
}


def create(kind: str, params: Mapping[str, Any], objects: Mapping[int, State]) -> list[State]:
    """The new states for a creation request: one, or two for a pipe (its ends).

    Raises:
        ValueError: ``kind`` names no object.
        ClosedResourceError: an object it refers to (a condition's lock) is gone.
    """
    cls = KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown object kind {kind!r}")
    return cls.create(params, objects)
