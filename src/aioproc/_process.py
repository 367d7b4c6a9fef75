"""Process: one function in a child process, awaited from the event loop."""

from __future__ import annotations

import itertools
import signal
import weakref
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import anyio

from ._core import _loop
from ._core._engine import JobView, ProcessRun, resolve_start_method

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
        start_method = resolve_start_method(start_method)
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self.name = name if name is not None else f"Process-{next(_counter)}"
        self._start_method = start_method
        self._run: ProcessRun | None = None
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
        if self._run is not None:
            raise RuntimeError("a process can only be started once")
        # The callbacks reach this handle weakly: no cycle through the dispatcher keeps a
        # finished, forgotten Process (and what it holds) waiting for the cyclic GC.
        ref = weakref.ref(self)

        def on_exit(exitcode: int | None) -> None:
            me = ref()
            if me is not None:
                me.exitcode = exitcode
                me._ended = True
                _running.discard(me)
                me._wake()

        def on_done(_: JobView) -> None:
            me = ref()
            if me is not None:
                me._wake()

        self._run = ProcessRun(
            _loop.current_backend(),
            self._target,
            self._args,
            self._kwargs,
            start_method=self._start_method,
            on_exit=on_exit,
            on_done=on_done,
        )
        self.pid = self._run.pid
        self._started = True
        # Sent: the process no longer needs them, and holding them would keep shared
        # objects among the arguments (and their memory) alive as long as this handle.
        self._args, self._kwargs = (), {}
        _running.add(self)  # a started process is not collected while it runs

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_for(self, ready: Callable[[], bool]) -> None:
        # A future per caller: one caller's timeout or cancellation never affects another.
        run = self._run
        assert run is not None
        while not ready():
            waiter = run.backend.create_future()
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
        assert self._run is not None
        job = self._run.job
        await self._wait_for(job.finished)
        return job.outcome()  # type: ignore[no-any-return]

    def terminate(self) -> None:
        """Send SIGTERM to the process (and its process group)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL to the process (and its process group)."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self._run is None:
            raise RuntimeError("the process was not started")
        self._run.signal(sig)

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("the process was not started")

    def _cleanup(self) -> None:
        if self._run is not None:
            self._run.release()

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
        run = self.__dict__.get("_run")
        if run is not None:
            run.terminate_sync()

    def __repr__(self) -> str:
        if self._run is None:
            state = "initial"
        elif self.exitcode is None:
            state = "started"
        else:
            state = f"stopped exitcode={self.exitcode}"
        return f"<aioproc.Process name={self.name!r} pid={self.pid} {state}>"


Process.__module__ = "aioproc"
