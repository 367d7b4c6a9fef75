"""Lock, Semaphore, BoundedSemaphore, Event, Condition, Barrier across processes.

Each is awaited in the event loop (``await lock.acquire()``, ``async with lock``) and has a
blocking ``.sync`` view with the same method names and an optional ``timeout`` for plain
code in a child. Cancelling a waiter leaves the object as it was: a cancelled ``acquire``
holds nothing, even if the lock was granted in the instant before the cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from ._core import _client, _objects, _wire
from ._exceptions import WouldBlock
from ._proxy import Proxy

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = (
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "LockStatistics",
    "Semaphore",
)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise ValueError(
            f"timeout must be a non-negative number of seconds or None; got {timeout!r}"
        )


@dataclass(frozen=True)
class LockStatistics:
    """Attributes: locked, owner_pid (the holder's process id), waiters."""

    locked: bool
    owner_pid: int | None
    waiters: int


@dataclass(frozen=True)
class SemaphoreStatistics:
    """Attributes: value (permits available), waiters."""

    value: int
    waiters: int


@dataclass(frozen=True)
class EventStatistics:
    """Attributes: is_set, waiters."""

    is_set: bool
    waiters: int


@dataclass(frozen=True)
class ConditionStatistics:
    """Attributes: waiters (tasks waiting to be notified)."""

    waiters: int


@dataclass(frozen=True)
class BarrierStatistics:
    """Attributes: parties, n_waiting, broken."""

    parties: int
    n_waiting: int
    broken: bool


class _Acquirable(Proxy):
    """Shared by Lock and the semaphores: acquire / release in both worlds."""

    async def acquire(self) -> bool:
        """Wait until acquired. A cancelled acquire holds nothing.

        Raises:
            LockOwnerDiedError: (Lock) the previous holder died holding it; the lock is
                free now, and this call did not acquire it.
        """
        await self._endpoint.call(self._oid, _wire.OP_ACQUIRE, undo=_client.Undo.release(self._oid))
        return True

    def acquire_nowait(self) -> None:
        """Acquire at once or raise ``aioproc.WouldBlock``."""
        if self._endpoint.call_sync(self._oid, _wire.OP_TRY_ACQUIRE) != _objects.TRUE:
            raise WouldBlock(f"the {self._kind} is not available")

    def release(self) -> None:
        self._endpoint.call_sync(self._oid, _wire.OP_RELEASE)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def sync(self) -> _AcquirableSync:
        """Blocking twins: ``acquire(blocking, timeout)``, ``release``, ``with``."""
        return _AcquirableSync(self)


class _AcquirableSync:
    def __init__(self, target: _Acquirable) -> None:
        self._target = target

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Block until acquired; False if ``timeout`` passed (or ``blocking`` is False)."""
        _check_timeout(timeout)
        t = self._target
        if not blocking:
            return t._endpoint.call_sync(t._oid, _wire.OP_TRY_ACQUIRE) == _objects.TRUE
        try:
            t._endpoint.call_sync(
                t._oid, _wire.OP_ACQUIRE, b"", timeout, undo=_client.Undo.release(t._oid)
            )
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        self._target.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Lock(_Acquirable):
    """A mutual-exclusion lock shared by processes.

    If the process holding it dies, the next acquirer gets
    :class:`aioproc.LockOwnerDiedError` and the lock is free again: no deadlock.
    """

    _kind = "lock"

    def __init__(self) -> None:
        self._create({})
        self._rebuilt()

    def locked(self) -> bool:
        return bool(self._stats()["locked"])

    def statistics(self) -> LockStatistics:
        return LockStatistics(**self._stats())


class Semaphore(_Acquirable):
    """A counter of permits shared by processes: ``acquire`` waits while it is 0."""

    _kind = "semaphore"
    _bounded = False

    def __init__(self, value: int = 1) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"value must be an int; got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"value must be at least 0; got {value}")
        self._create({"value": value, "bounded": self._bounded})
        self._rebuilt()

    @property
    def value(self) -> int:
        return int(self._stats()["value"])

    def statistics(self) -> SemaphoreStatistics:
        return SemaphoreStatistics(**self._stats())


class BoundedSemaphore(Semaphore):
    """A semaphore whose ``release`` raises ValueError past its initial value."""

    _bounded = True


class Event(Proxy):
    """A flag shared by processes; ``wait`` returns once it is set."""

    _kind = "event"

    def __init__(self) -> None:
        self._create({})
        self._rebuilt()

    @property
    def sync(self) -> _EventSync:
        """Blocking twins: ``set``, ``clear``, ``is_set``, ``wait(timeout)``."""
        return _EventSync(self)

    def set(self) -> None:
        self._endpoint.post(self._oid, _wire.OP_SET)

    def clear(self) -> None:
        self._endpoint.post(self._oid, _wire.OP_CLEAR)

    def is_set(self) -> bool:
        return bool(self._stats()["is_set"])

    async def wait(self) -> bool:
        await self._endpoint.call(self._oid, _wire.OP_WAIT)
        return True

    def statistics(self) -> EventStatistics:
        return EventStatistics(**self._stats())


class _EventSync:
    def __init__(self, event: Event) -> None:
        self._event = event

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until set; False if ``timeout`` passed first."""
        _check_timeout(timeout)
        e = self._event
        try:
            e._endpoint.call_sync(e._oid, _wire.OP_WAIT, b"", timeout)
        except TimeoutError:
            return False
        return True


class Condition(Proxy):
    """A condition variable over an :class:`aioproc.Lock`, shared by processes."""

    _kind = "condition"

    def __init__(self, lock: Lock | None = None) -> None:
        if lock is None:
            lock = Lock()
        elif not isinstance(lock, Lock):
            raise TypeError(f"lock must be an aioproc.Lock; got {type(lock).__name__}")
        self._create({"lock": lock._oid}, {"lock": lock})
        self._rebuilt()

    def _rebuilt(self) -> None:
        self._lock: Lock = self._extra["lock"]

    @property
    def sync(self) -> _ConditionSync:
        """Blocking twins of the condition's methods."""
        return _ConditionSync(self)

    async def acquire(self) -> bool:
        return await self._lock.acquire()

    def release(self) -> None:
        self._lock.release()

    async def __aenter__(self) -> None:
        await self._lock.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()

    async def wait(self) -> bool:
        """Release the lock, wait for a notification, re-acquire the lock, return True.

        If cancelled, the lock is re-acquired before the cancellation propagates, as with
        ``asyncio.Condition``.
        """
        try:
            await self._endpoint.call(
                self._oid,
                _wire.OP_COND_WAIT,
                undo=_client.Undo.release(self._lock._oid),
            )
        except Exception:
            raise  # refused (the lock was not held): nothing was released
        except BaseException:
            # Cancelled: the lock was released for the wait; hold it again, as promised.
            with anyio.CancelScope(shield=True):
                await self._lock.acquire()
            raise
        return True

    async def wait_for(self, predicate: Callable[[], Any]) -> Any:
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters (they return once they hold the lock again)."""
        self._endpoint.call_sync(self._oid, _wire.OP_NOTIFY, n.to_bytes(8, "little"))

    def notify_all(self) -> None:
        self.notify(2**62)

    def statistics(self) -> ConditionStatistics:
        return ConditionStatistics(**self._stats())


class _ConditionSync:
    def __init__(self, condition: Condition) -> None:
        self._condition = condition

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return self._condition._lock.sync.acquire(blocking, timeout)

    def release(self) -> None:
        self._condition.release()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Release, wait for a notification (False on timeout), re-acquire."""
        _check_timeout(timeout)
        c = self._condition
        try:
            c._endpoint.call_sync(
                c._oid,
                _wire.OP_COND_WAIT,
                b"",
                timeout,
                undo=_client.Undo.release(c._lock._oid),
            )
        except TimeoutError:
            c._lock.sync.acquire()
            return False
        return True

    def notify(self, n: int = 1) -> None:
        self._condition.notify(n)

    def notify_all(self) -> None:
        self._condition.notify_all()


class Barrier(Proxy):
    """``parties`` tasks or processes wait until all of them have arrived."""

    _kind = "barrier"

    def __init__(self, parties: int) -> None:
        if isinstance(parties, bool) or not isinstance(parties, int):
            raise TypeError(f"parties must be an int; got {type(parties).__name__}")
        if parties < 1:
            raise ValueError(f"parties must be greater than 0; got {parties}")
        self._create({"parties": parties}, {"parties": parties})
        self._rebuilt()

    def _rebuilt(self) -> None:
        self.parties: int = self._extra["parties"]

    @property
    def sync(self) -> _BarrierSync:
        """Blocking twin: ``wait(timeout)``."""
        return _BarrierSync(self)

    async def wait(self) -> int:
        """Wait for all parties; return this arrival's index (0 to parties - 1).

        Raises:
            BrokenBarrierError: the barrier was aborted or reset while waiting.
        """
        value = await self._endpoint.call(self._oid, _wire.OP_BARRIER_WAIT)
        return int.from_bytes(value, "little")

    def abort(self) -> None:
        self._endpoint.call_sync(self._oid, _wire.OP_ABORT)

    def reset(self) -> None:
        self._endpoint.call_sync(self._oid, _wire.OP_RESET)

    @property
    def n_waiting(self) -> int:
        return int(self._stats()["n_waiting"])

    @property
    def broken(self) -> bool:
        return bool(self._stats()["broken"])

    def statistics(self) -> BarrierStatistics:
        return BarrierStatistics(**self._stats())


class _BarrierSync:
    def __init__(self, barrier: Barrier) -> None:
        self._barrier = barrier

    def wait(self, timeout: float | None = None) -> int:
        _check_timeout(timeout)
        b = self._barrier
        value = b._endpoint.call_sync(
            b._oid, _wire.OP_BARRIER_WAIT, b"", None if timeout is None else timeout
        )
        return int.from_bytes(value, "little")


for _cls in (
    Lock,
    Semaphore,
    BoundedSemaphore,
    Event,
    Condition,
    Barrier,
    LockStatistics,
    SemaphoreStatistics,
    EventStatistics,
    ConditionStatistics,
    BarrierStatistics,
):
    _cls.__module__ = "aioproc"
