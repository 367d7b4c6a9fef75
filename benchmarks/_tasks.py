"""The work the benchmarks send to workers.

Everything here is module-level so it pickles by reference, and the module imports nothing
heavy, because every worker of every implementation imports it.
"""

from __future__ import annotations

import os
import struct
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

_FRAME = struct.Struct("<q")


def double(x: int) -> int:
    """The tiny task: `x * 2`."""
    return x * 2


def burn(n: int) -> int:
    """CPU-bound pure-Python loop; the cost grows linearly with `n`."""
    return sum(i * i for i in range(n))


def length(data: bytes) -> int:
    """Return the size of a payload (the payload figure sends it, gets this back)."""
    return len(data)


async def adouble(x: int) -> int:
    """`double` for implementations that only run coroutine functions."""
    return x * 2


async def aburn(n: int) -> int:
    """`burn` for implementations that only run coroutine functions."""
    return sum(i * i for i in range(n))


async def alength(data: bytes) -> int:
    """`length` for implementations that only run coroutine functions."""
    return len(data)


ASYNC_TWINS: dict[Callable[..., Any], Callable[..., Awaitable[Any]]] = {
    double: adouble,
    burn: aburn,
    length: alength,
}
"""Sync task → the same work as an `async def`, for aiomultiprocess."""


def pipe_echo(rfd: int, wfd: int) -> None:
    """The raw-pipe latency floor's child: read an int, write back `x * 2`, until EOF.

    Args:
        rfd: Pipe end to read 8-byte requests from.
        wfd: Pipe end to write 8-byte replies to.
    """
    size = _FRAME.size
    while True:
        request = os.read(rfd, size)
        if len(request) < size:  # EOF: the parent closed its end (8 bytes on a pipe are atomic)
            return
        (x,) = _FRAME.unpack(request)
        os.write(wfd, _FRAME.pack(double(x)))


# -- IPC figures: the child side (queue producer, event echo) -------------------------------


def clock() -> float:
    """Seconds on CLOCK_MONOTONIC: one clock for every process on the machine.

    A reading taken in a child can be subtracted from one taken in the parent, which is how
    the queue figure times from the producer's first put to the consumer's last get.
    """
    return time.clock_gettime(time.CLOCK_MONOTONIC)


QUEUE_READY = -1
"""The producer's first item, not timed: the channel is set up (connected, threads started)."""


def queue_produce_aioproc(q: Any, n: int) -> int:
    """Put `n` small ints on an `aioproc.Queue` as fast as possible (a pool task).

    The readiness item goes first; the clock starts after it, and the last item is
    `(start, end)` of the puts on `clock()`, for the parent to time the stream.
    """
    q.sync.put(QUEUE_READY)
    t0 = clock()
    for i in range(n):
        q.sync.put(i)
    q.sync.put((t0, clock()))
    return n


def queue_produce_mp(q: Any, n: int) -> None:
    """`queue_produce_aioproc` for a `multiprocessing.Queue` (or aioprocessing's `AioQueue`)."""
    q.put(QUEUE_READY)
    t0 = clock()
    for i in range(n):
        q.put(i)
    q.put((t0, clock()))


def queue_produce_pipe(conn: Any, n: int) -> None:
    """`queue_produce_aioproc` for the write end of a `multiprocessing.Pipe`."""
    conn.send(QUEUE_READY)
    t0 = clock()
    for i in range(n):
        conn.send(i)
    conn.send((t0, clock()))
    conn.close()


def event_echo_aioproc(ping: Any, pong: Any, rounds: int, timeout: float) -> int:
    """Answer `rounds` pings on two `aioproc.Event`s: wait for ping, clear it, set pong.

    Returns:
        The rounds answered (fewer if a ping did not come within `timeout` seconds).
    """
    for done in range(rounds):
        if not ping.sync.wait(timeout):
            return done
        ping.sync.clear()
        pong.sync.set()
    return rounds


def event_echo_mp(ping: Any, pong: Any, rounds: int, timeout: float) -> None:
    """`event_echo_aioproc` for `multiprocessing.Event`s (or aioprocessing's `AioEvent`)."""
    for _ in range(rounds):
        if not ping.wait(timeout):
            return
        ping.clear()
        pong.set()
