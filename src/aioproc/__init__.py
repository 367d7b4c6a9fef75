"""aioproc: process parallelism that lives inside the event loop.

Pools, processes, queues, locks and shared memory for asyncio, uvloop and trio code, with
cancellation that stops work, timeouts, and workers that fail one task and heal.
"""

from ._exceptions import AioprocError as AioprocError
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
from ._pool import MapIterator as MapIterator
from ._pool import PoolStatistics as PoolStatistics
from ._pool import ProcessPool as ProcessPool
from ._pool import StreamIterator as StreamIterator
from ._pool import Task as Task
from ._pool import run as run

__version__ = "0.1.0"

__all__ = (
    "AioprocError",
    "ClosedResourceError",
    "EndOfStream",
    "LockOwnerDiedError",
    "MapIterator",
    "PoolClosedError",
    "PoolStatistics",
    "ProcessPool",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "StreamIterator",
    "Task",
    "ValidationError",
    "WorkerDiedError",
    "WouldBlock",
    "run",
)


def _at_exit() -> None:
    from ._core import _dispatch, _spawn

    _dispatch.terminate_all()
    _spawn.shutdown_forkserver()


import atexit as _atexit  # noqa: E402

_atexit.register(_at_exit)
