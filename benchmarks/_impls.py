"""The implementations compared: aioproc and its peers, each behind the same small interface.

Each pool-like implementation opens as an async context manager yielding `PoolOps`: `apply`
runs one task and `map` a list of tasks, both driven from asyncio the way the library's docs
show. The callables return the library's own awaitable (no wrapper coroutine is added), so
every column pays only for its own machinery.

Peer libraries are imported lazily (inside the openers), because this module is imported by
the parent process that only draws the table and by workers that only need `_tasks`.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from . import _tasks

START_METHODS = ("fork", "forkserver", "spawn")

ApplyFn = Callable[[Callable[[Any], Any], Any], Awaitable[Any]]
MapFn = Callable[[Callable[[Any], Any], list[Any]], Awaitable[list[Any]]]


@dataclass(frozen=True)
class PoolOps:
    """What a figure may do with an open pool.

    Attributes:
        apply: `apply(fn, arg)` → awaitable of `fn(arg)`, run in a worker.
        map: `map(fn, items)` → awaitable of `[fn(x) for x in items]`, with the
            implementation's default chunking.
    """

    apply: ApplyFn
    map: MapFn


PoolOpener = Callable[[int, "str | None"], AbstractAsyncContextManager[PoolOps]]
"""`opener(workers, start_method)`; `start_method=None` means the implementation's default."""


@dataclass(frozen=True)
class Impl:
    """One column of the table.

    Attributes:
        name: Column name, also the `--impl` value.
        imports: Modules imported before anything is measured; if one fails to import the
            implementation counts as not installed. Importing them up front also keeps import
            time out of the startup figure.
        distribution: Distribution name used to report the version.
        about: How the implementation is driven, for the notes under the table.
        open_pool: Opens a pool, or None for implementations that are not pools.
        start_methods: Start methods that can be chosen explicitly.
        default_start: The start method (or its equivalent) used when none is chosen.
    """

    name: str
    imports: tuple[str, ...]
    distribution: str | None
    about: str
    open_pool: PoolOpener | None = None
    start_methods: tuple[str, ...] = ()
    default_start: str | None = None


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _call_in_loop(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[[asyncio.Future[Any], Any], None],
    fut: asyncio.Future[Any],
    value: Any,
) -> None:
    """Resolve `fut` from a foreign thread (multiprocessing's result-handler thread)."""
    try:
        loop.call_soon_threadsafe(fn, fut, value)
    except RuntimeError:  # the loop closed meanwhile (the figure timed out): nobody waits
        pass


def _mp_default_start_method() -> str:
    # Without fixing the process-wide choice: the first listed method is the default one.
    chosen = multiprocessing.get_start_method(allow_none=True)
    return chosen or multiprocessing.get_all_start_methods()[0]


_MP_DEFAULT = _mp_default_start_method()


# -- aioproc -------------------------------------------------------------------------------


@asynccontextmanager
async def _open_aioproc(workers: int, start_method: str | None) -> AsyncIterator[PoolOps]:
    import aioproc

    options: dict[str, Any] = {} if start_method is None else {"start_method": start_method}
    async with aioproc.ProcessPool(max_workers=workers, **options) as pool:
        yield PoolOps(apply=pool.apply, map=pool.map)


# -- concurrent.futures.ProcessPoolExecutor --------------------------------------------------


def _ppe_map(executor: Any, fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    # The chunk size people pass, since PPE.map's default (1) is known to be slow.
    chunksize = max(1, len(items) // (4 * workers))
    return list(executor.map(fn, items, chunksize=chunksize))


@asynccontextmanager
async def _open_ppe(workers: int, start_method: str | None) -> AsyncIterator[PoolOps]:
    from concurrent.futures import ProcessPoolExecutor

    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context(start_method)
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)

    def apply(fn: Callable[[Any], Any], arg: Any) -> Awaitable[Any]:
        return loop.run_in_executor(executor, fn, arg)

    def map_(fn: Callable[[Any], Any], items: list[Any]) -> Awaitable[list[Any]]:
        # Executor.map is blocking: drive it from the loop's default thread pool.
        return loop.run_in_executor(None, _ppe_map, executor, fn, items, workers)

    try:
        yield PoolOps(apply=apply, map=map_)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# -- multiprocessing.Pool -----------------------------------------------------------------


@asynccontextmanager
async def _open_mp_pool(workers: int, start_method: str | None) -> AsyncIterator[PoolOps]:
    loop = asyncio.get_running_loop()
    pool = multiprocessing.get_context(start_method).Pool(processes=workers)

    def _bridge(fut: asyncio.Future[Any]) -> dict[str, Any]:
        return {
            "callback": functools.partial(_call_in_loop, loop, _set_result, fut),
            "error_callback": functools.partial(_call_in_loop, loop, _set_exception, fut),
        }

    def apply(fn: Callable[[Any], Any], arg: Any) -> Awaitable[Any]:
        fut: asyncio.Future[Any] = loop.create_future()
        pool.apply_async(fn, (arg,), **_bridge(fut))
        return fut

    def map_(fn: Callable[[Any], Any], items: list[Any]) -> Awaitable[list[Any]]:
        fut: asyncio.Future[list[Any]] = loop.create_future()
        pool.map_async(fn, items, **_bridge(fut))  # default chunksize
        return fut

    try:
        yield PoolOps(apply=apply, map=map_)
    finally:
        pool.terminate()  # what `with Pool()` does on exit
        pool.join()


# -- anyio.to_process -----------------------------------------------------------------------


@asynccontextmanager
async def _open_anyio(workers: int, start_method: str | None) -> AsyncIterator[PoolOps]:
    import anyio
    import anyio.to_process

    if start_method is not None:
        raise ValueError("anyio.to_process has no start method option")
    limiter = anyio.CapacityLimiter(workers)
    run_sync = anyio.to_process.run_sync

    def apply(fn: Callable[[Any], Any], arg: Any) -> Awaitable[Any]:
        return run_sync(fn, arg, limiter=limiter)

    async def map_(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*(run_sync(fn, x, limiter=limiter) for x in items)))

    # Workers belong to the event loop, not to an object: anyio stops them when the loop ends,
    # and each figure runs in its own loop.
    yield PoolOps(apply=apply, map=map_)


# -- aiomultiprocess ------------------------------------------------------------------------


@asynccontextmanager
async def _open_aiomultiprocess(workers: int, start_method: str | None) -> AsyncIterator[PoolOps]:
    import aiomultiprocess  # type: ignore[import-untyped]

    # A process-wide setting in aiomultiprocess; no argument means its default ("spawn").
    if start_method is None:
        aiomultiprocess.set_start_method()
    else:
        aiomultiprocess.set_start_method(start_method)
    twins = _tasks.ASYNC_TWINS  # aiomultiprocess runs only coroutine functions

    async with aiomultiprocess.Pool(processes=workers) as pool:

        def apply(fn: Callable[[Any], Any], arg: Any) -> Awaitable[Any]:
            coroutine: Awaitable[Any] = pool.apply(twins[fn], (arg,))
            return coroutine

        async def map_(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
            return list(await pool.map(twins[fn], items))

        yield PoolOps(apply=apply, map=map_)


IMPLS: dict[str, Impl] = {
    impl.name: impl
    for impl in (
        Impl(
            name="aioproc",
            imports=("aioproc", "aioproc._pool"),
            distribution="aioproc",
            about="aioproc.ProcessPool: await pool.apply / pool.map; aioproc.Queue / Lock /"
            " Event: await get / acquire / wait in the parent, .sync in the child (a pool task)",
            open_pool=_open_aioproc,
            start_methods=START_METHODS,
            default_start="forkserver",
        ),
        Impl(
            name="ppe",
            imports=("concurrent.futures.process",),
            distribution=None,
            about="ProcessPoolExecutor + loop.run_in_executor; map(chunksize=n/(4*workers))"
            " in a thread",
            open_pool=_open_ppe,
            start_methods=START_METHODS,
            default_start=_MP_DEFAULT,
        ),
        Impl(
            name="mp_pool",
            imports=("multiprocessing.pool",),
            distribution=None,
            about="multiprocessing.Pool.apply_async / map_async, callbacks bridged with"
            " call_soon_threadsafe",
            open_pool=_open_mp_pool,
            start_methods=START_METHODS,
            default_start=_MP_DEFAULT,
        ),
        Impl(
            name="anyio",
            imports=("anyio", "anyio.to_process", "anyio._backends._asyncio"),
            distribution="anyio",
            about="anyio.to_process.run_sync with CapacityLimiter(workers); map = gather;"
            " workers are fresh interpreters (counted as spawn)",
            open_pool=_open_anyio,
            default_start="spawn",
        ),
        Impl(
            name="aiomultiprocess",
            imports=("aiomultiprocess",),
            distribution="aiomultiprocess",
            about="aiomultiprocess.Pool(processes=workers); async def twins of the tasks",
            open_pool=_open_aiomultiprocess,
            start_methods=START_METHODS,
            default_start="spawn",
        ),
        Impl(
            name="mp_ipc",
            imports=("multiprocessing.queues", "multiprocessing.synchronize"),
            distribution=None,
            about="multiprocessing.Queue / Lock / Event with a multiprocessing.Process child;"
            " blocking get / acquire / wait via loop.run_in_executor(None, ...)",
            default_start=_MP_DEFAULT,
        ),
        Impl(
            name="mp_pipe",
            imports=("multiprocessing.connection",),
            distribution=None,
            about="hand-rolled queue: multiprocessing.Pipe(duplex=False), send() per item;"
            " loop.add_reader calling recv() while poll(), into an asyncio.Queue",
            default_start=_MP_DEFAULT,
        ),
        Impl(
            name="aioprocessing",
            imports=("aioprocessing",),
            distribution="aioprocessing",
            about="aioprocessing.AioQueue / AioLock / AioEvent with an AioProcess child;"
            " coro_get / coro_acquire / coro_wait",
            default_start=_MP_DEFAULT,
        ),
        Impl(
            name="raw_pipe",
            imports=(),
            distribution=None,
            about="latency floor: child echoing 8-byte frames over os.pipe, parent awaiting"
            " with loop.add_reader",
        ),
    )
}
"""Every column, in table order; `aioproc` is the subject, `raw_pipe` a floor, not a peer."""

SUBJECT = "aioproc"
FLOORS = frozenset({"raw_pipe"})
