"""Process: one function in a child process, awaited from the event loop."""

from __future__ import annotations

import itertools
import signal
import weakref
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import anyio

from ._core import _loop, _payload, _spawn
from ._core._dispatch import Dispatcher, Job, PoolConfig

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable, Mapping
    from types import TracebackType

    from ._core._loop import Future

__all__ = ("Process",)

T = TypeVar("T")

_counter = itertools.count(1)
_running: set[Process[Any]] = set()


class Process(Generic[T]):
    """Run ``target(*args, **kwargs)`` in a new process.

    ``target`` may be a plain or an ``async def`` function. Its return value is kept for
    :meth:`result`; its exit status follows Python's: 0 when it returns, 1 when it
    raises (the traceback is printed to the parent's stderr, as ``multiprocessing``
    does), ``n`` for ``sys.exit(n)``, minus the signal number when a signal killed it.
    Its ``print()``, stderr and logging reach the parent as a pool worker's do.

    The type parameter is the target's return type (for an ``async def`` target, what its
    coroutine returns), inferred from ``target``: ``await p.result()`` has that type.

    Args:
        target: the function to run.
        args: its positional arguments.
        kwargs: its keyword arguments.
        name: a name for the process (default ``Process-N``).
        start_method: ``"forkserver"`` (default on Linux), ``"spawn"`` or ``"fork"``.
    """

    @overload
    def __init__(
        self: Process[T],
        target: Callable[..., Coroutine[Any, Any, T]],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        start_method: str | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: Process[T],
        target: Callable[..., T],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        start_method: str | None = None,
    ) -> None: ...
    def __init__(
        self,
        target: Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        start_method: str | None = None,
    ) -> None:
        if not callable(target):
            raise TypeError(f"target must be callable; got {target!r}")
        start_method = _spawn.resolve_start_method(start_method)
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self.name = name if name is not None else f"Process-{next(_counter)}"
        self._start_method = start_method
        self._dispatcher: Dispatcher | None = None
        self._job: Job | None = None
        self._started = False
        self._ended = False
        self._waiters: list[Future] = []  # join() and result() callers
        self.pid: int | None = None
        self.exitcode: int | None = None

    def start(self) -> None:
        """Start the process (needs a running event loop).

        Raises:
            RuntimeError: started twice, or no event loop is running.
            SerializationError: the target or an argument cannot be pickled.
        """
        if self._dispatcher is not None:
            raise RuntimeError("a process can only be started once")
        backend = _loop.current_backend()
        d = Dispatcher(
            backend,
            PoolConfig(
                max_workers=1,
                concurrency=1,
                max_tasks_per_child=1,
                task_timeout=None,
                retries=0,
                start_method=self._start_method,
                initializer=b"",
                process=True,
            ),
        )
        fn_id = d.function_id(self._target)
        payload, release = _payload.dumps_maybe_large((self._args, self._kwargs or None))
        job = Job(fn_id, payload)
        job.release = release
        d.start()
        d.submit(job)
        d.closing = True  # one task, no replacement worker
        (worker,) = d.workers
        self.pid = worker.pid
        self._started = True
        # Sent: the process no longer needs them, and holding them would keep shared
        # objects among the arguments (and their memory) alive as long as this handle.
        self._args, self._kwargs = (), {}
        # The callbacks reach this handle weakly: no cycle through the dispatcher keeps a
        # finished, forgotten Process (and what it holds) waiting for the cyclic GC.
        ref = weakref.ref(self)

        def on_exit() -> None:
            me = ref()
            if me is not None:
                me.exitcode = worker.proc.exitcode
                me._ended = True
                _running.discard(me)
                me._wake()

        def on_done(_: Job) -> None:
            me = ref()
            if me is not None:
                me._wake()

        worker.exited.append(on_exit)
        job.notify = on_done
        _running.add(self)  # a started process is not collected while it runs
        self._dispatcher = d
        self._job = job

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_for(self, ready: Callable[[], bool]) -> None:
        # A future per caller: one caller's timeout or cancellation never affects another.
        d = self._dispatcher
        assert d is not None
        while not ready():
            waiter = d.backend.create_future()
            self._waiters.append(waiter)
            await waiter

    def is_alive(self) -> bool:
        return self._started and not self._ended

    async def join(self, timeout: float | None = None) -> int | None:  # noqa: ASYNC109
        """Wait for the process to end; return its exit code (None if ``timeout`` passed)."""
        self._check_started()
        with anyio.move_on_after(timeout):
            await self._wait_for(lambda: self._ended)
        if not self._ended:
            return None
        self._cleanup()
        return self.exitcode

    async def result(self) -> T:
        """Wait for the target's return value, or raise its exception.

        Cancelling the caller does not stop the process (use :meth:`kill`).

        Raises:
            WorkerDiedError: the process ended without a result (killed, ``os._exit``).
        """
        self._check_started()
        job = self._job
        assert job is not None
        await self._wait_for(job.finished)
        return job.outcome()  # type: ignore[no-any-return]

    def terminate(self) -> None:
        """Send SIGTERM to the process (and its process group)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to the process (and its process group)."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        d = self._dispatcher
        if d is None:
            raise RuntimeError("the process was not started")
        for worker in d.workers:
            worker.proc.kill(sig)

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("the process was not started")

    def _cleanup(self) -> None:
        d = self._dispatcher
        if d is not None and not d.workers:
            d.closed = True
            d.terminate_sync()

    async def __aenter__(self) -> Process[T]:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.kill()
        with anyio.CancelScope(shield=exc_type is not None):
            await self.join()

    def __del__(self) -> None:
        d = self.__dict__.get("_dispatcher")
        if d is not None and d.workers:
            d.terminate_sync()

    def __repr__(self) -> str:
        if self._dispatcher is None:
            state = "initial"
        elif self.exitcode is None:
            state = "started"
        else:
            state = f"stopped exitcode={self.exitcode}"
        return f"<aioproc.Process name={self.name!r} pid={self.pid} {state}>"


Process.__module__ = "aioproc"
