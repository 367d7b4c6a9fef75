"""aioproc: process parallelism that lives inside the event loop.

Pools, processes, queues, locks and shared memory for asyncio, uvloop and trio code, with
cancellation that stops work, timeouts, and workers that fail one task and heal.

The errors are imported eagerly; everything else on first access (PEP 562). A worker
process imports ``aioproc._core`` and must not pay for the public API it never uses (the
pool alone pulls in asyncio, some 40 ms of a spawned worker's start-up).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._exceptions import AioprocError as AioprocError
from ._exceptions import BrokenBarrierError as BrokenBarrierError
from ._exceptions import ClosedResourceError as ClosedResourceError
from ._exceptions import EndOfStream as EndOfStream
from ._exceptions import LockOwnerDiedError as LockOwnerDiedError
from ._exceptions import PoolClosedError as PoolClosedError
from ._exceptions import RemoteError as RemoteError
from ._exceptions import RemoteTraceback as RemoteTraceback
from ._exceptions import SerializationError as SerializationError
from ._exceptions import ValidationError as ValidationError
from ._exceptions import WorkerDiedError as WorkerDiedError
from ._exceptions import WouldBlock as WouldBlock

if TYPE_CHECKING:
    from ._manager import DictProxy as DictProxy
    from ._manager import ListProxy as ListProxy
    from ._manager import Manager as Manager
    from ._manager import NamespaceProxy as NamespaceProxy
    from ._pipe import Connection as Connection
    from ._pipe import Pipe as Pipe
    from ._pool import MapIterator as MapIterator
    from ._pool import PoolStatistics as PoolStatistics
    from ._pool import ProcessPool as ProcessPool
    from ._pool import StreamIterator as StreamIterator
    from ._pool import Task as Task
    from ._pool import run as run
    from ._process import Process as Process
    from ._queue import Queue as Queue
    from ._queue import QueueStatistics as QueueStatistics
    from ._shared import Array as Array
    from ._shared import Value as Value
    from ._shared import shared_buffer as shared_buffer
    from ._sync import Barrier as Barrier
    from ._sync import BoundedSemaphore as BoundedSemaphore
    from ._sync import Condition as Condition
    from ._sync import Event as Event
    from ._sync import Lock as Lock
    from ._sync import Semaphore as Semaphore

__version__ = "0.1.0"

__all__ = (
    "AioprocError",
    "Array",
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "ClosedResourceError",
    "Condition",
    "Connection",
    "DictProxy",
    "EndOfStream",
    "Event",
    "ListProxy",
    "Lock",
    "LockOwnerDiedError",
    "Manager",
    "MapIterator",
    "NamespaceProxy",
    "Pipe",
    "PoolClosedError",
    "PoolStatistics",
    "Process",
    "ProcessPool",
    "Queue",
    "QueueStatistics",
    "RemoteError",
    "RemoteTraceback",
    "Semaphore",
    "SerializationError",
    "StreamIterator",
    "Task",
    "ValidationError",
    "Value",
    "WorkerDiedError",
    "WouldBlock",
    "run",
    "shared_buffer",
)

_LAZY = {
    "Array": "._shared",
    "Barrier": "._sync",
    "BoundedSemaphore": "._sync",
    "Condition": "._sync",
    "Connection": "._pipe",
    "DictProxy": "._manager",
    "ListProxy": "._manager",
    "Manager": "._manager",
    "NamespaceProxy": "._manager",
    "Event": "._sync",
    "Lock": "._sync",
    "Pipe": "._pipe",
    "Process": "._process",
    "Queue": "._queue",
    "QueueStatistics": "._queue",
    "Semaphore": "._sync",
    "Value": "._shared",
    "MapIterator": "._pool",
    "PoolStatistics": "._pool",
    "ProcessPool": "._pool",
    "StreamIterator": "._pool",
    "Task": "._pool",
    "run": "._pool",
    "shared_buffer": "._shared",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aioproc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
