"""Functions the soak (``benchmarks/soak.py``, ``tests/test_soak.py``) runs in workers.

Kept light, like ``tests/tasks.py``: every replacement worker imports it again.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class SoakError(Exception):
    """A task's own exception type (not a builtin): it must come back as itself."""

    def __init__(self, index: int) -> None:
        super().__init__(f"soak task {index} failed on purpose")
        self.index = index

    def __reduce__(self) -> tuple[type[SoakError], tuple[int]]:
        return (type(self), (self.index,))


def value(index: int) -> int:
    """What ``work(index)`` returns; the parent computes it too, to check the result."""
    return (index * 2654435761) % 4294967291


def work(index: int) -> int:
    return value(index)


def work_pair(index: int) -> tuple[int, int]:
    """``work`` naming its task: results that arrive in completion order say whose they are."""
    return index, value(index)


def fail(index: int, kind: str) -> None:
    if kind == "value":
        raise ValueError(f"soak task {index} raised")
    if kind == "key":
        raise KeyError(index)
    raise SoakError(index)


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached: the signal is delivered before the call returns


def hang() -> None:
    """Run until killed (the pool's task_timeout or a cancellation)."""
    while True:
        time.sleep(10)


def announce_and_hang(path: str) -> None:
    """Create ``path`` (the parent now knows the task runs), then run until killed."""
    Path(path).touch()
    hang()


# --- for the regression tests of tests/test_soak.py ---------------------------------------


def announce_and_wait(path: str, release: str) -> str:
    """Create ``path``, then return once ``release`` exists."""
    Path(path).touch()
    while not Path(release).exists():
        time.sleep(0.005)
    return "released"


def note_and_exit(path: str, code: int) -> None:
    """Add a line to ``path`` (one per run), then exit with ``code``."""
    with open(path, "a") as f:
        f.write("ran\n")
    os._exit(code)


def die_first_time(marker: str, seconds: float) -> str:
    """Sleep ``seconds``; the first time (no ``marker`` file yet) die after it, then succeed."""
    time.sleep(seconds)
    path = Path(marker)
    if not path.exists():
        path.touch()
        os._exit(7)
    return "second run"
