"""The `memory` figures: PSS of the whole process tree of a program holding a pool.

A program opens a pool of `sizes.workers` workers, runs some tasks on it (each worker runs
some, `map` and `apply` both), and while the pool is still open the proportional set size
(PSS) of every process of its tree is summed: this process, and every live descendant at any
depth (a fork server, a resource tracker, the workers). PSS charges a page shared by n
processes 1/n to each, so the sum is what the tree costs the machine, pages shared between
a fork server and its workers (or a parent and its forked workers) counted once.

Each sample runs in a fresh interpreter (`Figure.fresh_process`), like `startup`, so that no
earlier figure's fork server, imports or heap growth counts. The measuring process is the
benchmark child itself: the harness's own modules are in every column alike.

PSS is read from `/proc/<pid>/smaps_rollup` (Linux 4.14+); elsewhere the figure fails.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from . import _tasks
from ._proc import descendants, is_zombie

if TYPE_CHECKING:
    from ._figures import Measurement, Sizes
    from ._impls import Impl

_MAP_ITEMS = 2_000
"""Items of the `map` each sample runs before measuring: every worker runs some."""


def pss_kib(pid: int) -> int | None:
    """PSS of one process in KiB, or None if it is gone (or its zombie is left)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None  # a zombie's smaps_rollup is empty


def tree_pss_kib(root: int | None = None) -> dict[int, int]:
    """PSS in KiB of `root` (default: this process) and of each live descendant, by pid."""
    root = os.getpid() if root is None else root
    found: dict[int, int] = {}
    for pid in [root, *descendants(root)]:
        if pid != root and is_zombie(pid):
            continue
        kib = pss_kib(pid)
        if kib is not None:
            found[pid] = kib
    return found


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in args if a)
    return text if len(text) <= 80 else text[:77] + "..."


async def memory(impl: Impl, start_method: str | None, sizes: Sizes) -> Measurement:
    """PSS of this process plus every descendant, pool open after some tasks (MiB)."""
    # Here: `_figures` imports this module to register the figure (an import cycle).
    from ._figures import Measurement, _check, _opener, _touch_workers

    items = list(range(_MAP_ITEMS))
    async with _opener(impl)(sizes.workers, start_method) as pool:
        await _touch_workers(pool, sizes)
        _check(await pool.map(_tasks.double, items), [2 * x for x in items], "map")
        await _touch_workers(pool, sizes)
        # Let replies, result threads and freed buffers settle before reading /proc.
        await asyncio.sleep(0.2)
        by_pid = tree_pss_kib()
        me = os.getpid()
        others: dict[str, Any] = {
            f"{pid} {_name(pid)}": round(kib / 1024, 2) for pid, kib in by_pid.items() if pid != me
        }
    return Measurement(
        sum(by_pid.values()) / 1024,
        {
            "start_method": start_method or impl.default_start,
            "parent_mib": round(by_pid.get(me, 0) / 1024, 2),
            "descendants_mib": round(sum(v for p, v in by_pid.items() if p != me) / 1024, 2),
            "processes": len(by_pid),
            "by_process_mib": others,
        },
    )
