"""The engine's API: what the public layer (``_pool.py``, ``_process.py``) calls.

::

    ProcessPool / Task / MapIterator / StreamIterator / Process
            │  call · apply · chunk · map · run_all · wait · on_done · ack · cancel
            ▼
    Engine ── pickles functions (_functions) and arguments (_codec), names what cannot be
            │  sent, builds jobs, parks callers on futures of the loop (_loop.Backend)
            ▼
    Dispatcher (_dispatch) ── queue, workers, routing, supervision

The public layer never sees a ``Job``'s insides: it gets ``JobView``s (read-only) and
hands them back here. Nothing below this module knows the public objects.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from .._exceptions import SerializationError
from . import _codec, _payload, _spawn, _wire
from ._dispatch import (
    DONE,
    MODE_CALL,
    MODE_MAP,
    MODE_STARMAP,
    MODE_STREAM,
    SENT,
    Dispatcher,
    Job,
    JobState,
    JobView,
    PoolConfig,
)
from ._spawn import resolve_start_method

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._loop import Backend, Handle

__all__ = (
    "MODE_MAP",
    "MODE_STARMAP",
    "MODE_STREAM",
    "STREAM_ACK",
    "Engine",
    "EngineStatistics",
    "JobState",
    "JobView",
    "PoolConfig",
    "ProcessRun",
    "default_chunksize",
    "resolve_start_method",
)

# Items a stream's consumer takes before it returns credit to the worker: half the
# worker's window, so the worker never runs dry while the consumer keeps up.
STREAM_ACK = _wire.STREAM_WINDOW // 2


class EngineStatistics(NamedTuple):
    pids: list[int]
    busy: int
    queued: int
    completed: int
    failed: int
    restarts: int


class Engine:
    """One pool's engine in one event loop: jobs in, outcomes out."""

    __slots__ = ("backend", "config", "dispatcher")

    def __init__(
        self,
        backend: Backend,
        config: PoolConfig,
        *,
        launch: Callable[[str, int, int], _spawn.ProcessHandle] = _spawn.start_process,
    ) -> None:
        self.backend = backend
        self.config = config
        self.dispatcher = Dispatcher(backend, config, launch=launch)

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start all workers now (a pool is warm before its first task)."""
        self.dispatcher.start()

    def until_loop_ends(self) -> Handle:
        """A task that releases the workers when the event loop shuts down (cancel it on close)."""
        return self.backend.start_task(functools.partial(_end_with_the_loop, self.dispatcher))

    @property
    def closed(self) -> bool:
        return self.dispatcher.closed

    async def aclose(self, *, cancel: bool) -> None:
        """Stop accepting work, finish (or cancel) what is there, stop every worker."""
        await self.dispatcher.aclose(cancel=cancel)

    def terminate_sync(self) -> None:
        """Kill and reap every worker without waiting on the loop; unfinished jobs fail."""
        self.dispatcher.terminate_sync()

    def statistics(self) -> EngineStatistics:
        d = self.dispatcher
        return EngineStatistics(d.pids(), d.busy(), d.queued(), d.completed, d.failed, d.restarts)

    @property
    def slots(self) -> int:
        """Tasks the pool runs at once: workers times their concurrency."""
        return self.config.max_workers * self.config.concurrency

    def submit(self, view: JobView) -> None:
        """Queue a job made by ``chunk``.

        Raises:
            PoolClosedError: the pool is closed or broken.
        """
        self.dispatcher.submit(cast("Job", view))

    def cancel(self, view: JobView) -> None:
        """Cancel a job: a queued one never starts, a running one is stopped."""
        self.dispatcher.cancel(cast("Job", view))

    # --- calls ----------------------------------------------------------------------------

    def function_id(self, fn: Callable[..., Any]) -> int:
        """The id under which workers know ``fn``; pickles it on first use.

        Raises:
            SerializationError: ``fn`` cannot be pickled.
        """
        return self.dispatcher.functions.id_of(fn)

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        mode: int = MODE_CALL,
        on_item: Callable[[Any], None] | None = None,
        on_done: Callable[[JobView], None] | None = None,
    ) -> JobView:
        """Submit ``fn(*args, **kwargs)``; return its job.

        Raises:
            SerializationError: ``fn`` or an argument (named) cannot be pickled.
            PoolClosedError: the pool is closed or broken.
        """
        job = self._job(fn, args, kwargs, mode)
        job.on_item = on_item
        job.on_done = on_done
        self.dispatcher.submit(job)
        return job

    async def apply(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` and return its result: the library's hottest path."""
        backend = self.backend
        if backend.cancel_pending():
            await backend.checkpoint()  # a cancelled caller never reaches a worker
        job = self._job(fn, args, kwargs, MODE_CALL)
        self.dispatcher.submit(job)
        return await self.wait(job)

    def _job(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], mode: int
    ) -> Job:
        fn_id = self.dispatcher.functions.id_of(fn)
        try:
            payload, release = _payload.dumps_maybe_large((args, kwargs or None))
        except SerializationError:
            raise _argument_error(args, kwargs) from None
        job = Job(fn_id, payload, mode)
        job.release = release  # large buffers wait in shared memory until the job ends
        return job

    # --- maps -----------------------------------------------------------------------------

    def chunk(
        self,
        fn_id: int,
        items: list[Any],
        start: int,
        mode: int,
        *,
        on_item: Callable[[Any], None] | None = None,
        on_done: Callable[[JobView], None] | None = None,
    ) -> JobView:
        """A job running ``fn`` over ``items`` (input positions from ``start``), not submitted.

        Raises:
            SerializationError: an item (named by its input position) cannot be pickled.
        """
        try:
            payload = _codec.dumps(items)
        except SerializationError:
            for offset, item in enumerate(items):
                try:
                    _codec.dumps(item)
                except SerializationError as exc:
                    raise SerializationError(
                        f"cannot send input item {start + offset} of type "
                        f"{_codec.type_name(item)!r} to a worker: {exc.__cause__}"
                    ) from None
            raise
        timeout = self.config.task_timeout
        if timeout is not None:
            timeout *= len(items)
        job = Job(fn_id, payload, mode, timeout)
        job.on_item = on_item
        job.on_done = on_done
        return job

    async def map(
        self, fn_id: int, items: list[Any], chunksize: int | None, mode: int
    ) -> list[Any]:
        """Run ``fn`` over every item in chunks; the results in input order.

        The first chunk to fail cancels the rest and its exception is raised.
        """
        if not items:
            return []
        if chunksize is None:
            chunksize = default_chunksize(len(items), self.slots)
        # A chunk's results arrive in parts as they finish (they count in statistics()
        # as they come), then with its end. Parts are kept as they came: each result is
        # copied once, into the list returned.
        parts: list[list[list[Any]]] = []
        jobs: list[Job] = []
        for start in range(0, len(items), chunksize):
            got: list[list[Any]] = []
            parts.append(got)
            part = items[start : start + chunksize]
            jobs.append(cast("Job", self.chunk(fn_id, part, start, mode, on_item=got.append)))
        await self.run_all(jobs)
        results: list[Any] = []
        for job, got in zip(jobs, parts, strict=True):
            for part in got:
                results += part
            results += job.value
        return results

    async def run_all(self, views: Sequence[JobView]) -> None:
        """Submit jobs, wait for all of them; on the first failure cancel the rest, raise."""
        jobs = cast("Sequence[Job]", views)
        backend = self.backend
        if backend.cancel_pending():
            await backend.checkpoint()  # a cancelled caller never reaches a worker
        future = backend.create_future()
        remaining = len(jobs)
        failed: list[Job] = []  # not the future's result: a finished future may outlive us

        def on_done(job: Job) -> None:
            nonlocal remaining
            remaining -= 1
            if job.state != DONE:
                failed.append(job)
            if (failed or not remaining) and not future.done():
                future.set_result(None)

        for job in jobs:
            job.on_done = on_done
        try:
            for job in jobs:
                self.dispatcher.submit(job)
            await future
        except BaseException:
            for job in jobs:
                self.dispatcher.cancel(job)
            raise
        finally:
            # job -> on_done -> job is a cycle: broken here, the results go as soon as the
            # caller drops them, not at the next run of the cycle collector.
            for job in jobs:
                job.on_done = None
        if failed:
            for job in jobs:
                self.dispatcher.cancel(job)
            failed[0].outcome()

    # --- following a job ------------------------------------------------------------------

    async def wait(self, view: JobView) -> Any:
        """Wait for a job; if the waiting task is cancelled, cancel the job too."""
        job = cast("Job", view)
        if job.state <= SENT:
            future = job.future
            if future is None:
                future = job.future = self.backend.create_future()
            try:
                await future
            except BaseException:
                self.dispatcher.cancel(job)
                raise
        return job.outcome()

    def on_done(self, view: JobView, callback: Callable[[JobView], None] | None) -> None:
        """Call ``callback(job)`` once the job is resolved (replaces an earlier callback)."""
        cast("Job", view).on_done = callback

    def ack(self, view: JobView, n: int) -> None:
        """A stream's consumer took ``n`` more items: the worker may run that far ahead."""
        job = cast("Job", view)
        worker = job.worker
        if worker is not None and not job.finished():
            self.dispatcher.send_control(worker, _wire.Ack(job.id, n))


class ProcessRun:
    """One function in a process of its own (``aioproc.Process``).

    A dispatcher with one worker that runs one job and is not replaced: the worker's exit
    status is the process's, and ``on_exit`` is told once it has been reaped.
    """

    __slots__ = ("_dispatcher", "_worker", "job", "pid")

    def __init__(
        self,
        backend: Backend,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        start_method: str,
        on_exit: Callable[[int | None], None],
        on_done: Callable[[JobView], None],
    ) -> None:
        engine = Engine(
            backend,
            PoolConfig(
                max_workers=1,
                concurrency=1,
                max_tasks_per_child=1,
                task_timeout=None,
                retries=0,
                start_method=start_method,
                process=True,
            ),
        )
        d = engine.dispatcher
        job = engine._job(fn, args, kwargs, MODE_CALL)  # before a process exists: nothing to undo
        job.on_done = on_done
        d.start()
        d.submit(job)
        d.closing = True  # one task, no replacement worker
        (worker,) = d.workers
        proc = worker.proc
        worker.exit_callbacks.append(lambda: on_exit(proc.exitcode))
        self._dispatcher = d
        self._worker = worker
        self.job: JobView = job
        self.pid = worker.pid

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process (and its process group) if it has not been reaped."""
        if self._dispatcher.workers:
            self._worker.proc.kill(sig)

    @property
    def backend(self) -> Backend:
        return self._dispatcher.backend

    def release(self) -> None:
        """Close what is left once the process has been reaped (its job is resolved)."""
        d = self._dispatcher
        if not d.workers:
            d.closed = True
            d.terminate_sync()

    def terminate_sync(self) -> None:
        """Kill and reap the process without the event loop (the handle was collected)."""
        if self._dispatcher.workers:
            self._dispatcher.terminate_sync()


def default_chunksize(n: int, slots: int) -> int:
    """As ``multiprocessing.Pool.map``: about four chunks per slot, so that the load evens
    out while each chunk is big enough for the per-message cost to vanish."""
    size, extra = divmod(n, slots * 4)
    return max(1, size + bool(extra))


def _argument_error(args: tuple[Any, ...], kwargs: dict[str, Any]) -> SerializationError:
    named = [(f"argument {i}", v) for i, v in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for what, value in named:
        try:
            _codec.dumps(value)
        except SerializationError as exc:
            cause = exc.__cause__
            return SerializationError(
                f"cannot send {what} of type {_codec.type_name(value)!r} to a worker: {cause}"
            )
    return SerializationError("cannot send the arguments to a worker")


async def _end_with_the_loop(dispatcher: Dispatcher) -> None:
    """Sleeps until the pool's event loop shuts down, then releases the pool's workers.

    ``asyncio.run()``, ``asyncio.Runner`` (pytest-asyncio's loops) and ``trio.run()``
    cancel what is left when their main task returns; a pool still open then would keep
    its workers until the interpreter exits. The pool cancels this task once closed.
    """
    try:
        await dispatcher.backend.create_future()
    finally:
        if not dispatcher.closed:
            dispatcher.terminate_sync()
