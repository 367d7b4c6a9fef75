"""The one place that knows which event loop is running.

The dispatcher needs five things from a loop: call me when this fd is readable (or
writable), call me soon, call me later, a future to park a waiting task on, and a task that
runs on its own. :class:`Backend` is that contract. asyncio (and uvloop, which is asyncio)
provides it natively with ``add_reader``; trio gets a small adapter built on
``trio.lowlevel.wait_readable`` system tasks. Either way the pipes are waited on by the
loop's own epoll: no helper thread, no polling.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import sys
import weakref
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Generator

__all__ = (
    "Backend",
    "Future",
    "Handle",
    "cancelled_error",
    "current_backend",
    "invalid_state_error",
)


class Handle(Protocol):
    def cancel(self) -> object: ...


class Future(Protocol):
    """The subset of ``asyncio.Future`` the dispatcher uses; awaitable under its own loop."""

    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def set_result(self, value: Any) -> None: ...
    def set_exception(self, exc: BaseException) -> None: ...
    def cancel(self) -> bool: ...
    def __await__(self) -> Generator[Any, None, Any]: ...


class Backend(Protocol):
    name: str

    def add_reader(self, fd: int, callback: Callable[[], object]) -> object: ...
    def remove_reader(self, fd: int) -> object: ...
    def add_writer(self, fd: int, callback: Callable[[], object]) -> object: ...
    def remove_writer(self, fd: int) -> object: ...
    def call_soon(self, callback: Callable[[], object]) -> object: ...
    def call_later(self, delay: float, callback: Callable[[], object]) -> Handle: ...
    def create_future(self) -> Future: ...
    def start_task(self, coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> Handle: ...
    def time(self) -> float: ...
    def is_running(self) -> bool: ...
    def is_current(self) -> bool: ...
    def cancel_pending(self) -> bool: ...
    async def checkpoint(self) -> None: ...

    # Per-loop state: the default pool of ``aioproc.run`` (one backend per loop or run).
    default_pool: Any

    def call_soon_with(self, callback: Callable[[Any], object], arg: Any, context: Any) -> None:
        """Call ``callback(arg)`` soon, in ``context`` where the loop supports it."""

    def asyncio_loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop behind this backend (RuntimeError under trio)."""


# --- asyncio ------------------------------------------------------------------------------


class AsyncioBackend:
    name = "asyncio"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.add_reader = loop.add_reader
        self.remove_reader = loop.remove_reader
        self.add_writer = loop.add_writer
        self.remove_writer = loop.remove_writer
        self.call_soon = loop.call_soon
        self.call_later = loop.call_later
        self.create_future = loop.create_future
        self.time = loop.time
        self._tasks: set[asyncio.Task[None]] = set()
        self.default_pool: Any = None

    def start_task(self, coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> Handle:
        task = self.loop.create_task(coro_fn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def is_running(self) -> bool:
        return not self.loop.is_closed() and self.loop.is_running()

    def is_current(self) -> bool:
        """Is this backend's loop the one running in this thread?"""
        return asyncio._get_running_loop() is self.loop

    def cancel_pending(self) -> bool:
        """Will the current task be cancelled at its next checkpoint?

        ``Task.cancel()`` shows in ``cancelling()``; a cancelled anyio scope is delivered
        only at the task's next checkpoint, so its state is read the way anyio's own
        ``checkpoint_if_cancelled`` reads it, without that call's few microseconds.
        """
        task = asyncio.current_task(self.loop)
        if task is None:
            return False
        if task.cancelling():
            return True
        states = getattr(sys.modules.get("anyio._backends._asyncio"), "_task_states", None)
        if states is None:
            return False
        scope = getattr(states.get(task), "cancel_scope", None)
        while scope is not None:
            if scope.cancel_called:
                return True
            if scope.shield:
                return False
            scope = getattr(scope, "_parent_scope", None)
        return False

    async def checkpoint(self) -> None:
        await asyncio.sleep(0)

    def call_soon_with(self, callback: Callable[[Any], object], arg: Any, context: Any) -> None:
        self.loop.call_soon(callback, arg, context=context)

    def asyncio_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def __repr__(self) -> str:
        return f"{self.loop!r} (at {id(self.loop):#x})"


# --- trio ---------------------------------------------------------------------------------

_PENDING, _FINISHED, _CANCELLED = 0, 1, 2


class TrioFuture:
    """A one-shot result slot that trio tasks can await (many at once)."""

    __slots__ = ("_event", "_state", "_value")

    def __init__(self) -> None:
        self._state = _PENDING
        self._value: Any = None
        self._event: Any = None

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def _finish(self, state: int, value: Any) -> None:
        if self._state != _PENDING:
            raise asyncio.InvalidStateError("the future is already done")
        self._state = state
        self._value = value
        if self._event is not None:
            self._event.set()

    def set_result(self, value: Any) -> None:
        self._finish(_FINISHED, value)

    def set_exception(self, exc: BaseException) -> None:
        self._finish(_FINISHED, _Raise(exc))

    def cancel(self) -> bool:
        if self._state != _PENDING:
            return False
        self._finish(_CANCELLED, None)
        return True

    def result(self) -> Any:
        if self._state == _CANCELLED:
            raise asyncio.CancelledError
        if self._state == _PENDING:
            raise asyncio.InvalidStateError("the result is not set yet")
        value = self._value
        if isinstance(value, _Raise):
            raise value.exc
        return value

    async def _wait(self) -> Any:
        if self._state == _PENDING:
            if self._event is None:
                import trio

                self._event = trio.Event()
            await self._event.wait()
        return self.result()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait().__await__()


class _Raise:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _TrioHandle:
    __slots__ = ("_scope",)

    def __init__(self, scope: Any) -> None:
        self._scope = scope

    def cancel(self) -> None:
        self._scope.cancel()


class _TimerHandle:
    __slots__ = ("_backend", "callback", "cancelled")

    def __init__(self, callback: Callable[[], object], backend: TrioBackend) -> None:
        self.callback = callback
        self.cancelled = False  # also once it has fired
        self._backend = backend

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = _nothing  # what the callback holds (a job, its result) goes now
            self._backend._timer_cancelled()


def _nothing() -> None:
    pass


class TrioBackend:
    name = "trio"

    def __init__(self) -> None:
        import trio

        self._trio = trio
        self._token = trio.lowlevel.current_trio_token()
        self.call_soon = self._token.run_sync_soon
        self._readers: dict[int, Any] = {}
        self._writers: dict[int, Any] = {}
        self._timers: list[tuple[float, int, _TimerHandle]] = []
        self._seq = itertools.count()
        self._timer_wake: Any = None
        self._timer_deadline = math.inf
        self._timer_task = False
        self._cancelled_timers = 0
        self.default_pool: Any = None

    def time(self) -> float:
        return float(self._trio.current_time())

    def create_future(self) -> TrioFuture:
        return TrioFuture()

    def is_running(self) -> bool:
        try:
            return self._trio.lowlevel.current_trio_token() is self._token
        except RuntimeError:
            return False

    is_current = is_running

    def cancel_pending(self) -> bool:
        return bool(self._trio.current_effective_deadline() == -math.inf)

    async def checkpoint(self) -> None:
        await self._trio.lowlevel.checkpoint()

    def call_soon_with(self, callback: Callable[[Any], object], arg: Any, context: Any) -> None:
        # trio runs callbacks in the run's own context; there is no other to pick.
        self.call_soon(lambda: callback(arg))

    def asyncio_loop(self) -> asyncio.AbstractEventLoop:
        raise RuntimeError("this belongs to a trio run, not an asyncio event loop")

    def __repr__(self) -> str:
        return f"<trio run {self._token!r}>"

    def start_task(self, coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> Handle:
        scope = self._trio.CancelScope()

        async def runner() -> None:
            with scope:
                await coro_fn()

        self._trio.lowlevel.spawn_system_task(runner)
        return _TrioHandle(scope)

    def _watch(self, fd: int, callback: Callable[[], object], writable: bool) -> Any:
        trio = self._trio
        wait = trio.lowlevel.wait_writable if writable else trio.lowlevel.wait_readable
        scope = trio.CancelScope()

        async def watcher() -> None:
            with scope:
                while True:
                    try:
                        await wait(fd)
                    except (trio.ClosedResourceError, OSError):
                        return
                    _guard(callback)

        trio.lowlevel.spawn_system_task(watcher)
        return scope

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        self.remove_reader(fd)
        self._readers[fd] = self._watch(fd, callback, writable=False)

    def remove_reader(self, fd: int) -> None:
        scope = self._readers.pop(fd, None)
        if scope is not None:
            scope.cancel()

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None:
        self.remove_writer(fd)
        self._writers[fd] = self._watch(fd, callback, writable=True)

    def remove_writer(self, fd: int) -> None:
        scope = self._writers.pop(fd, None)
        if scope is not None:
            scope.cancel()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Handle:
        handle = _TimerHandle(callback, self)
        deadline = self.time() + max(delay, 0.0)
        heapq.heappush(self._timers, (deadline, next(self._seq), handle))
        if not self._timer_task:
            self._timer_task = True
            self._trio.lowlevel.spawn_system_task(self._run_timers)
        elif deadline < self._timer_deadline and self._timer_wake is not None:
            self._timer_wake.set()
        return handle

    def _timer_cancelled(self) -> None:
        # As asyncio does: drop the cancelled timers once they are most of the heap. Else a
        # pool with a long task_timeout keeps one per finished task for that long.
        self._cancelled_timers += 1
        timers = self._timers
        if self._cancelled_timers > 100 and 2 * self._cancelled_timers > len(timers):
            timers[:] = [entry for entry in timers if not entry[2].cancelled]
            heapq.heapify(timers)
            self._cancelled_timers = 0

    async def _run_timers(self) -> None:
        trio = self._trio
        timers = self._timers
        while True:
            now = self.time()
            while timers and timers[0][0] <= now:
                _, _, handle = heapq.heappop(timers)
                if handle.cancelled:
                    self._cancelled_timers -= 1
                else:
                    handle.cancelled = True
                    _guard(handle.callback)
            self._timer_deadline = timers[0][0] if timers else math.inf
            self._timer_wake = trio.Event()
            with trio.move_on_at(self._timer_deadline):
                await self._timer_wake.wait()


def _guard(callback: Callable[[], object]) -> None:
    # An exception escaping a trio system task would crash the whole run; the dispatcher's
    # callbacks do not raise, and if one ever does, it is logged like asyncio would.
    try:
        callback()
    except Exception:
        logging.getLogger("aioproc").exception("exception in callback %r", callback)


_asyncio_backends: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncioBackend] = (
    weakref.WeakKeyDictionary()
)
_trio_runvar: Any = None


def current_backend() -> Backend:
    """The backend of the event loop running in this thread.

    Raises:
        RuntimeError: no asyncio or trio event loop is running.
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            global _trio_runvar
            if _trio_runvar is None:
                _trio_runvar = trio.lowlevel.RunVar("aioproc_backend")
            try:
                return _trio_runvar.get()  # type: ignore[no-any-return]
            except LookupError:
                backend = TrioBackend()
                _trio_runvar.set(backend)
                return backend
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("aioproc needs a running event loop (asyncio, uvloop or trio)") from None
    backend_ = _asyncio_backends.get(loop)
    if backend_ is None:
        backend_ = _asyncio_backends[loop] = AsyncioBackend(loop)
    return backend_


def cancelled_error() -> BaseException:
    """What awaiting a cancelled aioproc task raises, under every loop.

    ``asyncio.CancelledError``, trio included (documented in docs/pools.md): an
    ``aioproc.Task`` follows ``asyncio.Future``'s protocol, and trio's own ``Cancelled``
    cannot be raised outside the cancel scope that owns it.
    """
    return asyncio.CancelledError()


def invalid_state_error(message: str) -> Exception:
    """What ``Task.result()`` raises before the task is done (``asyncio.Future``'s error)."""
    return asyncio.InvalidStateError(message)
