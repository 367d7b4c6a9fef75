"""Every error aioproc raises itself.

The hierarchy::

    AioprocError
    ├── WorkerDiedError          a worker process ended under a task (signal or exit code)
    ├── PoolClosedError          the pool was closed before the task could run
    ├── SerializationError       a value could not be pickled or unpickled
    ├── ValidationError          a typed channel received a message of the wrong shape
    ├── LockOwnerDiedError       the process holding a lock died
    ├── ClosedResourceError      you closed it (also an ``anyio.ClosedResourceError``)
    ├── EndOfStream              the peer closed it (also an ``anyio.EndOfStream``)
    ├── WouldBlock               a ``*_nowait`` call could not proceed (also ``anyio.WouldBlock``)
    │   ├── QueueEmpty           ``get_nowait`` on an empty queue (also a ``queue.Empty``)
    │   └── QueueFull            ``put_nowait`` on a full queue (also a ``queue.Full``)
    ├── BrokenBarrierError       a barrier was aborted or reset (also ``threading``'s)
    └── RemoteError              a task raised an exception that could not cross back

A task's own exceptions keep their type; the worker's formatted traceback rides along as
``__cause__`` (a :class:`RemoteTraceback`). Timeouts raise the built-in ``TimeoutError``.
Every class here is picklable, since errors cross process boundaries.
"""

from __future__ import annotations

import queue
import threading

import anyio

__all__ = (
    "AioprocError",
    "BrokenBarrierError",
    "ClosedResourceError",
    "EndOfStream",
    "LockOwnerDiedError",
    "PoolClosedError",
    "QueueEmpty",
    "QueueFull",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "ValidationError",
    "WorkerDiedError",
    "WouldBlock",
)


class AioprocError(Exception):
    """Base class of every error raised by aioproc itself."""


class WorkerDiedError(AioprocError):
    """A worker process ended while it was running the task.

    Attributes:
        exitcode: the exit code, or minus the signal number when a signal killed it.
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[type[WorkerDiedError], tuple[str, int | None]]:
        return (type(self), (str(self), self.exitcode))


class PoolClosedError(AioprocError):
    """The pool was closed (or broke) before the task could complete."""


class SerializationError(AioprocError):
    """A value could not be serialised to, or rebuilt in, another process."""


class ValidationError(AioprocError):
    """A typed channel received a message that does not match its type."""


class LockOwnerDiedError(AioprocError):
    """The process that held a lock died; the lock has been released to the caller."""


class ClosedResourceError(AioprocError, anyio.ClosedResourceError):
    """The resource was closed by this side and cannot be used any more."""


class EndOfStream(AioprocError, anyio.EndOfStream):
    """The other side closed the channel; nothing more will arrive."""


class WouldBlock(AioprocError, anyio.WouldBlock):
    """A ``*_nowait`` call could not proceed without waiting."""


class QueueEmpty(WouldBlock, queue.Empty):
    """``get_nowait`` found the queue empty (also a ``queue.Empty``)."""


class QueueFull(WouldBlock, queue.Full):
    """``put_nowait`` found the queue full (also a ``queue.Full``)."""


class BrokenBarrierError(AioprocError, threading.BrokenBarrierError):
    """The barrier was aborted or reset while tasks waited on it."""


class RemoteError(AioprocError):
    """A task raised an exception that could not be sent back as itself.

    Attributes:
        type_name: the qualified name of the original exception type.
        traceback: the formatted remote traceback.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback))


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process, shown as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


for _cls in (
    AioprocError,
    WorkerDiedError,
    PoolClosedError,
    SerializationError,
    ValidationError,
    LockOwnerDiedError,
    ClosedResourceError,
    EndOfStream,
    WouldBlock,
    QueueEmpty,
    QueueFull,
    BrokenBarrierError,
    RemoteError,
    RemoteTraceback,
):
    _cls.__module__ = "aioproc"
