"""The state of every IPC object, as the hub keeps it.

Each class is a small state machine driven by operations (``OP_*``) that arrive from any
process. An operation either completes at once or parks a *waiter*; a later operation
completes parked waiters. A waiter is anything with ``resolve(value) -> bool`` (False when
nobody is left to receive the value: the next waiter is tried) and ``fail(exc)``; the hub
supplies waiters for local tasks, blocking calls and remote requests alike.

Values are bytes: an item as its sender encoded it, or a small pickled result. Nothing here
does I/O or knows about event loops.

Invariants:
- A queue with waiting getters holds no item; a queue with waiting putters is full.
- A lock is held by at most one owner; ``owner_died`` is set only while the lock is free.
- A cancelled waiter is removed before anything else happens to the object, so a value is
  never handed to a waiter that is gone (a value granted just before the cancellation is
  returned by the canceller: see ``_hub``).
"""

from __future__ import annotations

import collections
import pickle
from typing import Any, Protocol

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

OP_PUT, OP_PUT_NOWAIT, OP_GET, OP_GET_NOWAIT, OP_CLOSE, OP_PUT_FRONT = 1, 2, 3, 4, 5, 6
OP_ACQUIRE, OP_TRY_ACQUIRE, OP_RELEASE = 10, 11, 12
OP_SET, OP_CLEAR, OP_WAIT = 30, 31, 32
OP_COND_WAIT, OP_NOTIFY = 40, 41
OP_BARRIER_WAIT, OP_ABORT, OP_RESET = 50, 51, 52
OP_STATS = 90

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

    kind = "object"

    def __init__(self) -> None:
        self.handles = 0

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        raise NotImplementedError

    def cancel(self, waiter: Waiter) -> None:
        """Forget a waiter that went away (cancelled, timed out, or its process died)."""

    def owner_gone(self, owner: object) -> None:
        """Every handle of ``owner`` (a process) is gone."""

    def stats(self) -> dict[str, Any]:
        return {}

    def release(self) -> None:
        """The last handle is gone: free what the object holds."""

    def unsupported(self, op: int, waiter: Waiter) -> None:
        waiter.fail(ValueError(f"operation {op} is not supported by a {self.kind}"))


def _remove(waiters: collections.deque[Any], waiter: Waiter) -> None:
    for index, item in enumerate(waiters):
        if item is waiter or (isinstance(item, tuple) and item[0] is waiter):
            del waiters[index]
            return


class QueueState(State):
    kind = "queue"

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize
        self.items: collections.deque[bytes] = collections.deque()
        self.getters: collections.deque[Waiter] = collections.deque()
        self.putters: collections.deque[tuple[Waiter, bytes]] = collections.deque()
        self.closed = False

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self.items)

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        if op == OP_PUT or op == OP_PUT_NOWAIT:
            if self.closed:
                waiter.fail(ClosedResourceError("the queue is closed"))
            elif _give(self.getters, arg):
                waiter.resolve(OK)
            elif not self.full():
                self.items.append(arg)
                waiter.resolve(OK)
            elif op == OP_PUT_NOWAIT:
                waiter.fail(QueueFull("the queue is full"))
            else:
                self.putters.append((waiter, arg))
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

    def admit(self) -> None:
        while self.putters and not self.full():
            putter, item = self.putters.popleft()
            if putter.resolve(OK):
                self.items.append(item)

    def cancel(self, waiter: Waiter) -> None:
        _remove(self.getters, waiter)
        _remove(self.putters, waiter)

    def stats(self) -> dict[str, Any]:
        return {
            "size": len(self.items),
            "maxsize": self.maxsize,
            "waiting_getters": len(self.getters),
            "waiting_putters": len(self.putters),
            "closed": self.closed,
        }


class LockState(State):
    """A lock; with ``value`` > 1 (or ``bounded``) the same machine is a semaphore."""

    kind = "lock"

    def __init__(self, value: int = 1, *, semaphore: bool = False, bounded: bool = False):
        super().__init__()
        self.value = value
        self.initial = value
        self.semaphore = semaphore
        self.bounded = bounded
        self.owners: collections.Counter[object] = collections.Counter()
        self.waiters: collections.deque[Waiter] = collections.deque()
        self.owner_died = False
        if semaphore:
            self.kind = "semaphore"

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


class EventState(State):
    kind = "event"

    def __init__(self) -> None:
        super().__init__()
        self.flag = False
        self.waiters: collections.deque[Waiter] = collections.deque()

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

    kind = "connection"

    def __init__(self, readable: bool, writable: bool) -> None:
        super().__init__()
        self.readable = readable
        self.writable = writable
        self.peer: PipeEndState | None = None
        self.inbox: collections.deque[bytes] = collections.deque()
        self.getters: collections.deque[Waiter] = collections.deque()
        self.closed = False

    def close(self) -> None:
        """The last handle of this end is gone: the peer reads what is left, then EOF."""
        if self.closed:
            return
        self.closed = True
        self.inbox.clear()
        peer = self.peer
        if peer is not None:
            while peer.getters:
                peer.getters.popleft().fail(EndOfStream())

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

    kind = "shared memory"

    def __init__(self, size: int) -> None:
        super().__init__()
        import os

        self.size = size
        self.fd: int | None = os.memfd_create("aioproc", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, max(size, 1))

    def handle(self, op: int, arg: bytes, waiter: Waiter) -> None:
        if op == OP_STATS:
            waiter.resolve(dumps({"size": self.size}))
        else:
            self.unsupported(op, waiter)

    def release(self) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


OP_METHOD = 60

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

    def __init__(self, kind: str, initial: Any) -> None:
        super().__init__()
        self.kind = kind
        self.allowed = _ALLOWED[kind]
        if kind == "dict":
            self.obj: Any = dict(initial or {})
        elif kind == "list":
            self.obj = list(initial or [])
        else:
            import types

            self.obj = types.SimpleNamespace(**(initial or {}))

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
            value = _dumps_value(result)
        except Exception as exc:
            waiter.fail(exc)
            return
        waiter.resolve(value)

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        obj = self.obj
        if self.kind == "namespace":
            if method == "__getattr__":
                return getattr(obj, *args)
            if method == "__setattr__":
                return setattr(obj, *args)
            if method == "__delattr__":
                return delattr(obj, *args)
            return dict(vars(obj))
        result = getattr(obj, method)(*args, **kwargs)
        if method in ("keys", "values", "items"):
            return list(result)
        return result


def _dumps_value(value: Any) -> bytes:
    return _codec.dumps(value)
