"""The work the benchmark server offloads: pure-Python CPU burns, importable by any worker.

::

    server process (event loop)          worker process (any strategy)
      GET /cpu      ── offload ──▶        cpu_task(n)        → worker pid
      GET /abandon  ── offload ──▶        counted_task(n, f) → "S pid" / "D pid" lines in f

This module imports only `os` and `_tasks` (both light), so that workers which import it by
reference (forkserver, spawn) pay nothing for the server's own dependencies.

Invariants:
    - The work is a fixed number of `_tasks.burn` iterations, not a time budget: the same
      request costs the same work under every strategy; the driver calibrates `n` once per run.
    - `counted_task` appends one line at its start and one at its end with a single
      `O_APPEND` write each, so concurrent workers never interleave within a line, and a
      task killed mid-way leaves a start line without an end line.

Tunables:
    - None here: the iteration counts come from the driver (`benchmarks.server`).
"""

from __future__ import annotations

import os

from ._tasks import burn


def cpu_task(n: int) -> int:
    """The CPU endpoint's task: `burn(n)`, then the worker's pid (the driver kills one)."""
    burn(n)
    return os.getpid()


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def counted_task(n: int, path: str) -> int:
    """The abandoned-work endpoint's task: `burn(n)` between a start and an end record.

    Args:
        n: Iterations to burn.
        path: File that collects one "S <pid>" line per start and one "D <pid>" per end.
    """
    pid = os.getpid()
    _append(path, f"S {pid}\n")
    burn(n)
    _append(path, f"D {pid}\n")
    return pid


async def cpu_task_async(n: int) -> int:
    """`cpu_task` as a coroutine function: aiomultiprocess runs only those."""
    return cpu_task(n)


async def counted_task_async(n: int, path: str) -> int:
    """`counted_task` as a coroutine function, for aiomultiprocess."""
    return counted_task(n, path)


def count_records(path: str) -> tuple[int, int]:
    """How many counted tasks started and how many ran to the end, from `path`."""
    try:
        with open(path) as f:
            kinds = [line[:1] for line in f]
    except FileNotFoundError:
        return 0, 0
    return kinds.count("S"), kinds.count("D")
