"""ProcessPool: the public face of the engine in ``_core``."""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import warnings
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeAlias, TypeVar, overload

import anyio

from ._core import _loop
from ._core._engine import (
    MODE_MAP,
    MODE_STARMAP,
    MODE_STREAM,
    STREAM_ACK,
    Engine,
    JobState,
    JobView,
    PoolConfig,
    default_chunksize,
    resolve_start_method,
)
from ._exceptions import PoolClosedError

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop
    from collections.abc import Generator
    from types import TracebackType

    from ._core._loop import Future, Handle

__all__ = ("PoolStatistics", "ProcessPool", "Task", "run")

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")

# The overloads below give each call the result type of its function: an ``async def``
# function's coroutine is unwrapped (a worker awaits it); a plain function's value is kept.
_Co: TypeAlias = Coroutine[Any, Any, T]
_Items: TypeAlias = Iterable[T] | AsyncIterable[T]  # an input of map and imap: sync or async


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of a pool.

    Attributes:
        workers: live worker processes.
        busy: workers that hold at least one task.
        queued: tasks waiting for a worker.
        completed: tasks that returned a value; each item of a ``map`` or ``imap`` counts,
            as soon as its result reaches the parent.
        failed: tasks (or ``map``/``imap`` items) that raised, timed out or lost their
            worker; items of a failed chunk that never ran count nowhere.
        restarts: workers started to replace one that died, was killed or was recycled.
        pids: process ids of the live workers.
    """

    workers: int
    busy: int
    queued: int
    completed: int
    failed: int
    restarts: int
    pids: tuple[int, ...] = ()


class Task(Generic[T_co]):
    """A task submitted with :meth:`ProcessPool.submit`: await it for the result.

    Awaiting a task that is then cancelled (a timeout scope, ``asyncio`` task cancellation)
    cancels the task, as awaiting an ``asyncio.Task`` does. Under asyncio it is also a
    future: ``asyncio.wait``, ``as_completed``, ``gather``, ``shield`` and ``wait_for``
    accept it.
    """

    __slots__ = ("__weakref__", "_callbacks", "_engine", "_job")

    # asyncio.isfuture() looks for this attribute: it makes asyncio.ensure_future() (and
    # so wait, as_completed, gather, shield) take the task as it is.
    _asyncio_future_blocking = False

    def __init__(self, engine: Engine, job: JobView) -> None:
        self._engine = engine
        self._job = job
        self._callbacks: list[tuple[Callable[[Task[T_co]], object], Any]] | None = None

    def __await__(self) -> Generator[Any, None, T_co]:
        return self._engine.wait(self._job).__await__()

    def cancel(self, msg: object = None) -> bool:
        """Cancel the task: a queued one never starts, a running one is stopped.

        Returns:
            False if the task had already finished.
        """
        if self._job.finished():
            return False
        self._engine.cancel(self._job)
        return True

    def done(self) -> bool:
        """True once the task has a result, an exception, or was cancelled."""
        return self._job.finished()

    def running(self) -> bool:
        """True while a worker runs the task (not while it waits in the queue or a pipe)."""
        return self._job.running()

    def cancelled(self) -> bool:
        return self._job.state == JobState.CANCELLED

    def result(self) -> T_co:
        """The task's return value (or raise its exception) once it is done.

        Raises:
            asyncio.InvalidStateError: the task is not done yet.
            asyncio.CancelledError: the task was cancelled.
        """
        if not self._job.finished():
            raise _loop.invalid_state_error("the task is not done yet")
        return self._job.outcome()  # type: ignore[no-any-return]

    def exception(self) -> BaseException | None:
        """The task's exception, or None if it returned a value."""
        if not self._job.finished():
            raise _loop.invalid_state_error("the task is not done yet")
        if self._job.state == JobState.CANCELLED:
            raise _loop.cancelled_error()
        return self._job.error

    def add_done_callback(
        self, callback: Callable[[Task[T_co]], object], *, context: Any = None
    ) -> None:
        """Call ``callback(task)`` from the event loop once the task is done."""
        if self._job.finished():
            self._schedule(callback, context)
            return
        if self._callbacks is None:
            self._callbacks = []
            self._engine.on_done(self._job, self._notify)
        self._callbacks.append((callback, context))

    def remove_done_callback(self, callback: Callable[[Task[T_co]], object]) -> int:
        """Remove every registration of ``callback``; return how many there were."""
        callbacks = self._callbacks
        if not callbacks:
            return 0
        kept = [(cb, ctx) for cb, ctx in callbacks if cb != callback]
        removed = len(callbacks) - len(kept)
        callbacks[:] = kept
        return removed

    def _notify(self, _: JobView) -> None:
        callbacks, self._callbacks = self._callbacks or [], []
        for callback, context in callbacks:
            self._schedule(callback, context)

    def _schedule(self, callback: Callable[[Task[T_co]], object], context: Any) -> None:
        self._engine.backend.call_soon_with(callback, self, context)

    def get_loop(self) -> AbstractEventLoop:
        """The asyncio event loop the task belongs to (asyncio.Future's protocol)."""
        return self._engine.backend.asyncio_loop()

    def _make_cancelled_error(self) -> BaseException:
        # asyncio.gather() asks a cancelled child future for the error to raise.
        return _loop.cancelled_error()

    def __repr__(self) -> str:
        state = ("queued", "running", "done", "failed", "cancelled")[self._job.state]
        return f"<aioproc.Task id={self._job.id} {state}>"


def _default_workers() -> int:
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        count = counter()
    else:
        try:
            count = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            count = os.cpu_count()
    return max(1, count or 1)


class ProcessPool:
    """A pool of worker processes driven from the event loop.

    Args:
        max_workers: number of worker processes; default: the CPUs this process may use.
        initializer: called as ``initializer(*initargs)`` in each worker when it starts;
            may be ``async def``.
        initargs: arguments for ``initializer``.
        max_tasks_per_child: replace a worker after it ran this many tasks.
        concurrency: coroutine tasks a worker runs at once (``async def`` functions).
        task_timeout: default limit, in seconds, on a task's run time; a task past it
            raises ``TimeoutError`` and its worker is replaced.
        retries: times a task whose worker died is re-run on a fresh worker.
        start_method: ``"forkserver"`` (default on Linux), ``"spawn"`` or ``"fork"``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        max_tasks_per_child: int | None = None,
        concurrency: int = 1,
        task_timeout: float | None = None,
        retries: int = 0,
        start_method: str | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = _default_workers()
        _check_int("max_workers", max_workers, minimum=1)
        if max_tasks_per_child is not None:
            _check_int("max_tasks_per_child", max_tasks_per_child, minimum=1)
        _check_int("concurrency", concurrency, minimum=1)
        _check_int("retries", retries, minimum=0)
        if task_timeout is not None:
            _check_seconds("task_timeout", task_timeout)
        start_method = resolve_start_method(start_method)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable; got {initializer!r}")
        try:
            initargs = tuple(initargs)
        except TypeError:
            raise TypeError(
                f"initargs must be an iterable of arguments for the initializer; "
                f"got {type(initargs).__name__}"
            ) from None
        self._max_workers = max_workers
        self._config = PoolConfig(
            max_workers=max_workers,
            concurrency=concurrency,
            max_tasks_per_child=max_tasks_per_child,
            task_timeout=task_timeout,
            retries=retries,
            start_method=start_method,
            initializer=initializer,
            initargs=initargs,
        )
        self._engine: Engine | None = None
        self._keeper: Handle | None = None
        self._closed = False

    # --- life cycle -------------------------------------------------------------------------

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def _live_engine(self) -> Engine:
        engine = self._engine
        if engine is not None:
            if engine.backend.is_current():
                return engine
            if self._closed:
                raise PoolClosedError("the pool is closed")
            raise self._foreign_loop(engine)
        if self._closed:
            raise PoolClosedError("the pool is closed")
        engine = Engine(_loop.current_backend(), self._config)
        self._engine = engine
        try:
            engine.start()
        except BaseException:
            engine.terminate_sync()
            raise
        self._keeper = engine.until_loop_ends()
        return engine

    @staticmethod
    def _foreign_loop(engine: Engine) -> RuntimeError:
        owner = engine.backend
        ended = "" if owner.is_running() else ", which has ended"
        return RuntimeError(
            f"this pool belongs to another event loop: it was started in {owner!r}{ended}, "
            f"and is used from {_loop.current_backend()!r}; create the pool inside the event "
            f"loop that uses it (one per asyncio.run(), or per test)"
        )

    async def __aenter__(self) -> ProcessPool:
        if self._closed:
            raise PoolClosedError("the pool is closed; a closed pool cannot be entered again")
        self._live_engine()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(cancel=exc_type is not None)

    async def aclose(self, *, cancel: bool = False) -> None:
        """Close the pool: wait for submitted work (or cancel it), then stop every worker.

        Args:
            cancel: cancel queued and running tasks instead of waiting for them.
        """
        self._closed = True
        engine = self._engine
        if engine is None:
            return
        if not engine.backend.is_current():
            if engine.backend.is_running():
                raise self._foreign_loop(engine)
            engine.terminate_sync()  # its loop has ended: nothing to wait for
            return
        try:
            await engine.aclose(cancel=cancel)
        except BaseException:
            # Cancelled while waiting for the work: cancel it, and still leave nothing.
            with anyio.CancelScope(shield=True):
                await engine.aclose(cancel=True)
            raise
        finally:
            engine.terminate_sync()  # nothing left to do if it closed cleanly
            self._stop_keeper()

    def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()

    def __del__(self) -> None:
        engine = self.__dict__.get("_engine")
        if engine is not None and not engine.closed:
            warnings.warn(
                f"unclosed {self!r}: use 'async with ProcessPool()' or 'await pool.aclose()'",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
            engine.terminate_sync()
            if engine.backend.is_current():
                self._stop_keeper()

    def __repr__(self) -> str:
        d = self.__dict__.get("_engine")
        state = "closed" if self._closed or (d is not None and d.closed) else "open"
        return f"<aioproc.ProcessPool max_workers={self._max_workers} {state}>"

    def statistics(self) -> PoolStatistics:
        """A snapshot of the pool's workers and task counts."""
        engine = self._engine
        if engine is None:
            return PoolStatistics(0, 0, 0, 0, 0, 0)
        stats = engine.statistics()
        return PoolStatistics(
            workers=len(stats.pids),
            busy=stats.busy,
            queued=stats.queued,
            completed=stats.completed,
            failed=stats.failed,
            restarts=stats.restarts,
            pids=tuple(stats.pids),
        )

    # --- single tasks -----------------------------------------------------------------------

    @overload
    async def apply(self, fn: Callable[P, _Co[T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    async def apply(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
    async def apply(
        self, fn: Callable[P, Awaitable[T]] | Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(*args, **kwargs)`` in a worker and return its result.

        ``fn`` may be a plain or an ``async def`` function. Cancelling the caller cancels
        the task (a running one has its worker killed and replaced).

        Raises:
            SerializationError: an argument (named in the message) cannot be pickled.
            WorkerDiedError: the worker died while running the task.
            TimeoutError: the task ran past ``task_timeout``.
            PoolClosedError: the pool is closed.
        """
        _check_callable("fn", fn)
        return await self._live_engine().apply(fn, args, kwargs)  # type: ignore[no-any-return]

    @overload
    def submit(self, fn: Callable[P, _Co[T]], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...
    @overload
    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]: ...
    def submit(
        self, fn: Callable[P, Awaitable[T]] | Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Task[T]:
        """Schedule ``fn(*args, **kwargs)``; return a :class:`Task` to await or cancel.

        The task's result type is ``fn``'s (for an ``async def`` function, what its
        coroutine returns).
        """
        _check_callable("fn", fn)
        d = self._live_engine()
        return Task(d, d.call(fn, args, kwargs))

    # --- many tasks -------------------------------------------------------------------------

    @overload
    async def map(
        self, fn: Callable[[T1], _Co[R]], it1: _Items[T1], /, *, chunksize: int | None = None
    ) -> list[R]: ...
    @overload
    async def map(
        self, fn: Callable[[T1], R], it1: _Items[T1], /, *, chunksize: int | None = None
    ) -> list[R]: ...
    @overload
    async def map(
        self,
        fn: Callable[[T1, T2], _Co[R]],
        it1: _Items[T1],
        it2: _Items[T2],
        /,
        *,
        chunksize: int | None = None,
    ) -> list[R]: ...
    @overload
    async def map(
        self,
        fn: Callable[[T1, T2], R],
        it1: _Items[T1],
        it2: _Items[T2],
        /,
        *,
        chunksize: int | None = None,
    ) -> list[R]: ...
    @overload
    async def map(
        self,
        fn: Callable[[T1, T2, T3], _Co[R]],
        it1: _Items[T1],
        it2: _Items[T2],
        it3: _Items[T3],
        /,
        *,
        chunksize: int | None = None,
    ) -> list[R]: ...
    @overload
    async def map(
        self,
        fn: Callable[[T1, T2, T3], R],
        it1: _Items[T1],
        it2: _Items[T2],
        it3: _Items[T3],
        /,
        *,
        chunksize: int | None = None,
    ) -> list[R]: ...
    @overload
    async def map(
        self,
        fn: Callable[..., _Co[R]],
        it1: _Items[Any],
        it2: _Items[Any],
        it3: _Items[Any],
        it4: _Items[Any],
        /,
        *iterables: _Items[Any],
        chunksize: int | None = None,
    ) -> list[R]: ...
    @overload
    async def map(
        self,
        fn: Callable[..., R],
        it1: _Items[Any],
        it2: _Items[Any],
        it3: _Items[Any],
        it4: _Items[Any],
        /,
        *iterables: _Items[Any],
        chunksize: int | None = None,
    ) -> list[R]: ...
    async def map(
        self, fn: Callable[..., Any], /, *iterables: _Items[Any], chunksize: int | None = None
    ) -> list[Any]:
        """Apply ``fn`` to every item; return the results in input order.

        With several iterables, as the built-in ``map``: ``fn`` is called with one item of
        each, ``fn(a[i], b[i], ...)``, until the shortest ends. Each may be an async
        iterable; together they are read item by item, as ``zip`` does.

        The first task to fail cancels the rest and its exception is raised.

        Raises:
            TypeError: no iterable, or an argument that is not iterable (named).
        """
        iterable, mode = _zip_inputs("map", iterables)
        return await self._map(fn, iterable, chunksize, mode)

    @overload
    async def starmap(
        self,
        fn: Callable[..., _Co[R]],
        iterable: _Items[Iterable[Any]],
        /,
        *,
        chunksize: int | None = None,
    ) -> list[R]: ...
    @overload
    async def starmap(
        self,
        fn: Callable[..., R],
        iterable: _Items[Iterable[Any]],
        /,
        *,
        chunksize: int | None = None,
    ) -> list[R]: ...
    async def starmap(
        self,
        fn: Callable[..., Any],
        iterable: _Items[Iterable[Any]],
        /,
        *,
        chunksize: int | None = None,
    ) -> list[Any]:
        """Like :meth:`map`, calling ``fn(*args)`` for each tuple of arguments."""
        return await self._map(fn, iterable, chunksize, MODE_STARMAP)

    async def _map(
        self,
        fn: Callable[..., Any],
        iterable: _Items[Any],
        chunksize: int | None,
        mode: int,
    ) -> list[Any]:
        if chunksize is not None:
            _check_int("chunksize", chunksize, minimum=1)
        d = self._live_engine()
        fn_id = d.function_id(fn)
        if isinstance(iterable, AsyncIterable):
            items = [item async for item in iterable]
        else:
            items = list(iterable)
        if mode == MODE_STARMAP:
            items = [tuple(args) for args in items]
        return await d.map(fn_id, items, chunksize, mode)

    @overload
    def imap(
        self, fn: Callable[[T1], _Co[R]], it1: _Items[T1], /, *, chunksize: int | None = None
    ) -> MapIterator[R]: ...
    @overload
    def imap(
        self, fn: Callable[[T1], R], it1: _Items[T1], /, *, chunksize: int | None = None
    ) -> MapIterator[R]: ...
    @overload
    def imap(
        self,
        fn: Callable[[T1, T2], _Co[R]],
        it1: _Items[T1],
        it2: _Items[T2],
        /,
        *,
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def imap(
        self,
        fn: Callable[[T1, T2], R],
        it1: _Items[T1],
        it2: _Items[T2],
        /,
        *,
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def imap(
        self,
        fn: Callable[[T1, T2, T3], _Co[R]],
        it1: _Items[T1],
        it2: _Items[T2],
        it3: _Items[T3],
        /,
        *,
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def imap(
        self,
        fn: Callable[[T1, T2, T3], R],
        it1: _Items[T1],
        it2: _Items[T2],
        it3: _Items[T3],
        /,
        *,
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def imap(
        self,
        fn: Callable[..., _Co[R]],
        it1: _Items[Any],
        it2: _Items[Any],
        it3: _Items[Any],
        it4: _Items[Any],
        /,
        *iterables: _Items[Any],
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def imap(
        self,
        fn: Callable[..., R],
        it1: _Items[Any],
        it2: _Items[Any],
        it3: _Items[Any],
        it4: _Items[Any],
        /,
        *iterables: _Items[Any],
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    def imap(
        self, fn: Callable[..., Any], /, *iterables: _Items[Any], chunksize: int | None = None
    ) -> MapIterator[Any]:
        """Iterate over ``fn(item)`` for each item, in input order, as results arrive.

        The input is consumed lazily with a bounded window of work in flight, so an
        infinite or async input works. Leaving the loop early cancels what is left.
        Several iterables are zipped as in :meth:`map`, lazily too.
        """
        iterable, mode = _zip_inputs("imap", iterables)
        return MapIterator(self._live_engine(), fn, iterable, chunksize, ordered=True, mode=mode)

    @overload
    def imap_unordered(
        self, fn: Callable[[T1], _Co[R]], it1: _Items[T1], /, *, chunksize: int | None = None
    ) -> MapIterator[R]: ...
    @overload
    def imap_unordered(
        self, fn: Callable[[T1], R], it1: _Items[T1], /, *, chunksize: int | None = None
    ) -> MapIterator[R]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[[T1, T2], _Co[R]],
        it1: _Items[T1],
        it2: _Items[T2],
        /,
        *,
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[[T1, T2], R],
        it1: _Items[T1],
        it2: _Items[T2],
        /,
        *,
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[[T1, T2, T3], _Co[R]],
        it1: _Items[T1],
        it2: _Items[T2],
        it3: _Items[T3],
        /,
        *,
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[[T1, T2, T3], R],
        it1: _Items[T1],
        it2: _Items[T2],
        it3: _Items[T3],
        /,
        *,
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[..., _Co[R]],
        it1: _Items[Any],
        it2: _Items[Any],
        it3: _Items[Any],
        it4: _Items[Any],
        /,
        *iterables: _Items[Any],
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    @overload
    def imap_unordered(
        self,
        fn: Callable[..., R],
        it1: _Items[Any],
        it2: _Items[Any],
        it3: _Items[Any],
        it4: _Items[Any],
        /,
        *iterables: _Items[Any],
        chunksize: int | None = None,
    ) -> MapIterator[R]: ...
    def imap_unordered(
        self, fn: Callable[..., Any], /, *iterables: _Items[Any], chunksize: int | None = None
    ) -> MapIterator[Any]:
        """Like :meth:`imap`, yielding results in completion order."""
        iterable, mode = _zip_inputs("imap_unordered", iterables)
        return MapIterator(self._live_engine(), fn, iterable, chunksize, ordered=False, mode=mode)

    @overload
    def stream(
        self, gen_fn: Callable[P, AsyncIterator[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamIterator[T]: ...
    @overload
    def stream(
        self, gen_fn: Callable[P, Iterator[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamIterator[T]: ...
    def stream(
        self, gen_fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs
    ) -> StreamIterator[Any]:
        """Run a generator (or async generator) function in a worker; iterate its items.

        Items arrive as the worker yields them; the worker runs at most a window of items
        ahead of the consumer. Leaving the loop early stops the generator's worker. The
        items' type is what the generator yields.
        """
        _check_callable("fn", gen_fn)
        return StreamIterator(self._live_engine(), gen_fn, args, kwargs)


# --- helpers ------------------------------------------------------------------------------


def _check_seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds or None; got {type(value).__name__}")
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a positive number of seconds or None; got {value!r}")


def _check_callable(name: str, fn: object) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable; got {fn!r}")


def _zip_inputs(method: str, iterables: tuple[Any, ...]) -> tuple[_Items[Any], int]:
    """The one input of ``map``/``imap`` over ``iterables``, and how its items are passed.

    One iterable: each item is the argument (``MODE_MAP``). Several: as the built-in
    ``map``, one item of each per call, zipped lazily into tuples of arguments
    (``MODE_STARMAP``), asynchronously when any of them is async.
    """
    if not iterables:
        raise TypeError(f"{method}() needs at least one iterable after the function")
    for position, iterable in enumerate(iterables, start=2):
        if isinstance(iterable, AsyncIterable):
            continue
        try:
            iter(iterable)
        except TypeError:
            raise TypeError(
                f"argument {position} of {method}() must be iterable; got {type(iterable).__name__}"
            ) from None
    if len(iterables) == 1:
        return iterables[0], MODE_MAP
    if any(isinstance(iterable, AsyncIterable) for iterable in iterables):
        return _AsyncZip(iterables), MODE_STARMAP
    return zip(*iterables, strict=False), MODE_STARMAP


class _AsyncZip:
    """``zip`` over iterables of which some are async: one item of each per step, lazily.

    Like ``zip``, it stops at the first iterable that ends, and stays ended.
    """

    __slots__ = ("_steps",)

    def __init__(self, iterables: tuple[_Items[Any], ...]) -> None:
        # (next-item function, whether it returns an awaitable), one per iterable.
        self._steps: list[tuple[Callable[[], Any], bool]] | None = [
            (it.__aiter__().__anext__, True)
            if isinstance(it, AsyncIterable)
            else (iter(it).__next__, False)
            for it in iterables
        ]

    def __aiter__(self) -> _AsyncZip:
        return self

    async def __anext__(self) -> tuple[Any, ...]:
        steps = self._steps
        if steps is None:
            raise StopAsyncIteration
        items = []
        try:
            for step, is_async in steps:
                items.append(await step() if is_async else step())
        except (StopIteration, StopAsyncIteration):
            self._steps = None
            raise StopAsyncIteration from None
        return tuple(items)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        relation = "greater than 0" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{name} must be {relation}; got {value}")


_MAX_CHUNK = 4096


class MapIterator(Generic[T]):
    """The async iterator returned by ``imap`` and ``imap_unordered``.

    Also an async context manager; ``aclose()`` (or leaving the loop and dropping the
    iterator) cancels the work still in flight.
    """

    def __init__(
        self,
        d: Engine,
        fn: Callable[..., Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        chunksize: int | None,
        *,
        ordered: bool,
        mode: int = MODE_MAP,
    ) -> None:
        if chunksize is not None:
            _check_int("chunksize", chunksize, minimum=1)
        self._d = d
        self._fn_id = d.function_id(fn)
        self._ordered = ordered
        self._mode = mode  # MODE_STARMAP: each item is a tuple of arguments (zipped inputs)
        self._sync: Iterable[Any] | None = None
        self._async: AsyncIterator[Any] | None = None
        if isinstance(iterable, AsyncIterable):
            self._async = iterable.__aiter__()
            self._size = chunksize or 1
            self._adaptive = False
        else:
            self._sync = iter(iterable)
            if chunksize is None and hasattr(iterable, "__len__"):
                n = len(iterable)  # type: ignore[arg-type]
                # Capped: imap promises bounded memory even over range(10**9).
                chunksize = min(default_chunksize(n, d.slots), _MAX_CHUNK)
            self._size = chunksize or 1
            self._adaptive = chunksize is None
        self._window = max(2, 2 * d.slots)
        self._inflight: dict[int, JobView] = {}
        self._order: dict[int, int] = {}  # job id -> position in the input (imap)
        self._submitted_at: dict[int, float] = {}
        self._finished: collections.deque[int] = collections.deque()
        self._next_seq = 0
        self._yield_seq = 0
        self._start = 0
        self._buffer: collections.deque[Any] = collections.deque()
        # imap: results of chunks after the one whose turn it is, by position (see _on_part)
        self._parts: dict[int, list[Any]] = {}
        self._exhausted = False
        self._source_error: BaseException | None = None
        self._waiter: Future | None = None
        self._room: Future | None = None  # the feeder waits on it for a free slot
        self._feeder: Handle | None = None
        self._closed = False

    def __aiter__(self) -> MapIterator[T]:
        return self

    async def __aenter__(self) -> MapIterator[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_done(self, job: JobView) -> None:
        self._finished.append(job.id)
        self._wake()

    def _on_part(self, seq: int, results: list[Any]) -> None:
        """Results of chunk ``seq`` that finished while the rest of it still runs.

        They are yielded at once; for ``imap``, those of a chunk whose turn has not come
        wait until the chunks before it are through (``__anext__`` moves them on).
        """
        if self._closed:
            return
        if self._ordered and seq != self._yield_seq:
            self._parts.setdefault(seq, []).extend(results)
            return
        self._buffer.extend(results)
        self._wake()

    def _submit(self, chunk: list[Any]) -> None:
        job = self._d.chunk(
            self._fn_id,
            chunk,
            self._start,
            self._mode,
            on_item=_weak_part(self, self._next_seq),
            on_done=_weak(self._on_done),
        )
        self._start += len(chunk)
        self._d.submit(job)
        self._inflight[job.id] = job
        self._submitted_at[job.id] = self._d.backend.time()
        if self._ordered:
            self._order[job.id] = self._next_seq
        self._next_seq += 1

    def _fill(self) -> None:
        """Top up the window from a sync source."""
        source = self._sync
        if source is None or self._exhausted:
            return
        while len(self._inflight) < self._window:
            chunk: list[Any] = []
            try:
                for _ in range(self._size):
                    chunk.append(next(source))  # type: ignore[call-overload]
            except StopIteration:
                self._exhausted = True
            except BaseException as exc:
                self._exhausted = True
                self._source_error = exc
            if chunk:
                self._submit(chunk)
            if self._exhausted:
                return

    def _room_waiter(self) -> Future | None:
        """A future to wait on while the window is full, else None."""
        if len(self._inflight) < self._window:
            return None
        room = self._room = self._d.backend.create_future()
        return room

    def _adapt(self, job_id: int) -> None:
        """Grow chunks while they come back fast, shrink them when they are slow."""
        submitted = self._submitted_at.pop(job_id, 0.0)
        if not self._adaptive:
            return
        elapsed = self._d.backend.time() - submitted
        if elapsed < 0.002:
            self._size = min(self._size * 2, _MAX_CHUNK)
        elif elapsed > 0.05 and self._size > 1:
            self._size //= 2

    def _take(self) -> JobView | None:
        finished = self._finished
        if self._ordered:
            for job_id in finished:
                if self._order[job_id] == self._yield_seq:
                    finished.remove(job_id)
                    self._yield_seq += 1
                    return self._inflight.pop(job_id)
            return None
        if finished:
            return self._inflight.pop(finished.popleft())
        return None

    async def __anext__(self) -> T:
        if self._d.backend.cancel_pending():
            await self._d.backend.checkpoint()  # a cancelled caller starts no more work
        while True:
            if self._buffer:
                return self._buffer.popleft()  # type: ignore[no-any-return]
            if self._closed:
                raise StopAsyncIteration
            job = self._take()
            if job is not None:
                self._order.pop(job.id, None)
                self._adapt(job.id)
                room = self._room
                if room is not None and not room.done():
                    room.set_result(None)
                if job.state != JobState.DONE:
                    # Its results before the failure were yielded already: they came
                    # before the failure, and the buffer is empty here.
                    await self.aclose()
                    job.outcome()
                self._buffer.extend(job.value)
                if self._ordered:
                    # The next chunk's turn: what it sent ahead follows this one's end.
                    ahead = self._parts.pop(self._yield_seq, None)
                    if ahead:
                        self._buffer.extend(ahead)
                continue
            if self._async is not None and self._feeder is None and not self._exhausted:
                self._feeder = self._d.backend.start_task(
                    functools.partial(_feed, weakref.ref(self), self._async)
                )
            self._fill()
            if not self._inflight and self._exhausted:
                error = self._source_error
                await self.aclose()
                if error is not None:
                    raise error
                raise StopAsyncIteration
            if self._source_error is not None and not self._inflight:
                continue
            waiter = self._waiter = self._d.backend.create_future()
            try:
                await waiter
            except BaseException:
                self._cancel_inflight()
                raise

    def _cancel_inflight(self) -> None:
        self._closed = True
        if self._feeder is not None:
            self._feeder.cancel()
            self._feeder = None
        for job in list(self._inflight.values()):
            self._d.cancel(job)
        self._inflight.clear()
        self._parts.clear()

    async def aclose(self) -> None:
        """Cancel what is still in flight; the iterator then ends."""
        self._cancel_inflight()
        self._buffer.clear()

    def __del__(self) -> None:
        if not self.__dict__.get("_closed", True) and self.__dict__.get("_inflight"):
            # Dropped mid-iteration (a `break`): cancel from the loop, not from the GC.
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing runs
                self._d.backend.call_soon(self._cancel_inflight)


def _weak(method: Callable[[Any], None]) -> Callable[[Any], None]:
    """``method`` without a strong reference to its object.

    The dispatcher holds jobs, and jobs hold their callbacks: a strong reference would keep
    an iterator the user dropped (a ``break``) alive, and its work running, for as long as
    the work runs.
    """
    ref = weakref.WeakMethod(method)

    def call(arg: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(arg)

    return call


def _weak_part(it: MapIterator[Any], seq: int) -> Callable[[Any], None]:
    """``it._on_part`` for chunk ``seq``, holding ``it`` weakly (see ``_weak``)."""
    ref = weakref.ref(it)

    def call(results: Any) -> None:
        target = ref()
        if target is not None:
            target._on_part(seq, results)

    return call


async def _feed(ref: weakref.ref[MapIterator[Any]], source: AsyncIterator[Any]) -> None:
    """Feeder task for an async source: keeps the window of an imap full as items arrive.

    It holds the iterator only by weak reference between steps, so a dropped iterator is
    collected (and its work cancelled) even while the feeder waits for input.
    """
    try:
        while True:
            it = ref()
            if it is None or it._closed:
                return
            room = it._room_waiter()
            size = it._size
            del it
            if room is not None:
                await room
                continue
            chunk: list[Any] = []
            exhausted = False
            try:
                while len(chunk) < size:
                    chunk.append(await source.__anext__())
            except StopAsyncIteration:
                exhausted = True
            it = ref()
            if it is None or it._closed:
                return
            if chunk:
                it._submit(chunk)
            if exhausted:
                it._exhausted = True
                it._wake()
                return
            del it
    except BaseException as exc:
        it = ref()
        if it is not None:
            if isinstance(exc, Exception):
                it._source_error = exc
            it._exhausted = True
            it._wake()
        if not isinstance(exc, Exception):
            raise


class StreamIterator(Generic[T]):
    """The async iterator returned by ``stream``."""

    def __init__(
        self, d: Engine, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._d = d
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: Future | None = None
        self._consumed = 0
        self._closed = False
        self._job = d.call(
            fn,
            args,
            kwargs,
            mode=MODE_STREAM,
            on_item=_weak(self._on_item),
            on_done=_weak(self._on_done),
        )

    def __aiter__(self) -> StreamIterator[T]:
        return self

    async def __aenter__(self) -> StreamIterator[T]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _on_item(self, item: Any) -> None:
        self._items.append(item)
        self._on_done()

    def _on_done(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __anext__(self) -> T:
        job = self._job
        while True:
            if self._items:
                self._consumed += 1
                if self._consumed % STREAM_ACK == 0:
                    self._d.ack(job, STREAM_ACK)
                return self._items.popleft()  # type: ignore[no-any-return]
            if job.finished() or self._closed:
                self._closed = True
                if job.state == JobState.DONE or job.state == JobState.CANCELLED:
                    raise StopAsyncIteration
                job.outcome()
            waiter = self._waiter = self._d.backend.create_future()
            try:
                await waiter
            except BaseException:
                self._cancel_inflight()
                raise

    def _cancel_inflight(self) -> None:
        self._closed = True
        self._d.cancel(self._job)

    async def aclose(self) -> None:
        """Stop the generator (its worker is replaced) if it is still running."""
        self._cancel_inflight()
        self._items.clear()

    def __del__(self) -> None:
        job = self.__dict__.get("_job")
        if job is not None and not job.finished():
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing runs
                self._d.backend.call_soon(self._cancel_inflight)


# --- the default pool ---------------------------------------------------------------------


def _default_pool() -> ProcessPool:
    backend = _loop.current_backend()  # one per asyncio loop or trio run
    pool: ProcessPool | None = backend.default_pool
    if pool is None or pool._closed:
        # Shut down with its loop, as every pool (Engine.until_loop_ends).
        pool = backend.default_pool = ProcessPool()
    return pool


@overload
async def run(fn: Callable[P, _Co[T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
@overload
async def run(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
async def run(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` on the default pool of the running event loop.

    The default pool is created on first use, with one worker per CPU, and shut down with
    the event loop: the one-liner for CPU-bound work inside an async server.
    """
    return await _default_pool().apply(fn, *args, **kwargs)


for _obj in (ProcessPool, Task, PoolStatistics, MapIterator, StreamIterator, run):
    _obj.__module__ = "aioproc"
