"""Functions the map/imap streaming tests run in workers (light: no test imports).

A gated item waits until the parent has received as many results as its own number: the
parent opens gate ``k`` (creates the file ``k``) once it holds ``k`` results. A pool that
kept finished results in the worker until their whole chunk is done never opens gate 1
for an item that shares a chunk with item 0: it fails with TimeoutError instead of
hanging the test.
"""

from __future__ import annotations

import asyncio
import os
import time

_GATE_LIMIT_S = 10.0


def _is_open(path: str) -> bool:
    return os.path.exists(path)


def _log(log: str, i: int) -> None:
    if log:
        with open(log, "a") as f:
            f.write(f"{i}\n")


def _die_here(i: int, die_at: int, marker: str) -> bool:
    if i != die_at or os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True


def gated(i: int, gates: str, log: str = "", die_at: int = -1, marker: str = "") -> int:
    """Return ``i`` once gate ``i`` is open; the first run of item ``die_at`` then dies."""
    _log(log, i)
    path = os.path.join(gates, str(i))
    deadline = time.monotonic() + _GATE_LIMIT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {i} never opened: finished results were held back")
        time.sleep(0.001)
    if _die_here(i, die_at, marker):
        os._exit(7)
    return i


async def async_gated(i: int, gates: str) -> int:
    """``gated`` as a coroutine: waits without holding the worker's event loop."""
    path = os.path.join(gates, str(i))
    deadline = time.monotonic() + _GATE_LIMIT_S
    while not _is_open(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {i} never opened: finished results were held back")
        await asyncio.sleep(0.001)
    return i
