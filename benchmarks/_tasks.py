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


_BLOBS: dict[int, bytes] = {}


def blob(size: int) -> bytes:
    """A `size`-byte result, made once per worker (the payload figure times its trip back,
    not its making)."""
    data = _BLOBS.get(size)
    if data is None:
        data = _BLOBS[size] = filled(size)
    return data


def blob_view(size: int) -> memoryview:
    """`blob` as a memoryview (aioproc's zero-copy way back)."""
    return memoryview(blob(size))


_SHARED: dict[int, Any] = {}


def blob_shared(size: int) -> Any:
    """`blob` in an `aioproc.shared_buffer`, filled once per worker: produced in shared
    memory, it crosses back with no copy (aioproc only)."""
    buf = _SHARED.get(size)
    if buf is None:
        import aioproc  # only aioproc's workers run this

        buf = _SHARED[size] = aioproc.shared_buffer(size)
        buf[:] = blob(size)
    return buf


def filled(size: int) -> bytes:
    """`size` random-looking bytes, every page written (1 MiB of noise, repeated); the same
    in every process for one size, so that any worker's `blob` is the one expected."""
    import random  # here: only the payload figure needs it

    unit = random.Random(size).randbytes(min(size, 1 << 20))
    whole, rest = divmod(size, len(unit))
    return unit * whole + unit[:rest]


async def ablob(size: int) -> bytes:
    """`blob` for implementations that only run coroutine functions."""
    return blob(size)


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
    blob: ablob,
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


def _consume_blocking(get: Any, ready: Any, n: int) -> float:
    """Take the readiness item and say so with `ready()`, then `n` ints in order, then the
    producer's `(start, end)`; return the seconds from its first put to this last int.

    The producer starts only once `ready()` was called: the consumer's own start-up is not
    timed.
    """
    got = get()
    if got != QUEUE_READY:
        raise AssertionError(f"readiness item: expected {QUEUE_READY!r}, got {got!r}")
    ready()
    for i in range(n):
        got = get()
        if got != i:
            raise AssertionError(f"item {i}: expected {i!r}, got {got!r}")
    last = clock()
    start, _ = get()
    return float(last - start)


def child_get_aioproc(q: Any, back: Any, n: int) -> float:
    """A child consumer on an `aioproc.Queue`: blocking `q.sync.get()` per item."""
    return _consume_blocking(q.sync.get, lambda: back.sync.put(QUEUE_READY), n)


def child_get_mp(q: Any, back: Any, n: int) -> None:
    """`child_get_aioproc` for a `multiprocessing.Queue`; the seconds go to `back` too."""
    back.put(_consume_blocking(q.get, lambda: back.put(QUEUE_READY), n))


def child_get_pipe(conn: Any, back: Any, n: int) -> None:
    """`child_get_aioproc` for the read end of a `multiprocessing.Pipe`."""
    back.send(_consume_blocking(conn.recv, lambda: back.send(QUEUE_READY), n))


def _forward(get: Any, put: Any, n: int) -> int:
    """Pass the readiness item, `n` ints and the timestamps from `get` to `put`."""
    for _ in range(n + 2):
        put(get())
    return n


def transform_aioproc(source: Any, sink: Any, n: int) -> int:
    """The middle of a pipeline: from one `aioproc.Queue` to another, blocking calls."""
    return _forward(source.sync.get, sink.sync.put, n)


def transform_mp(source: Any, sink: Any, n: int) -> None:
    """`transform_aioproc` for `multiprocessing.Queue`s (or aioprocessing's `AioQueue`s)."""
    _forward(source.get, sink.put, n)


def transform_pipe(source: Any, sink: Any, n: int) -> None:
    """`transform_aioproc` for a `multiprocessing.Pipe` read end and another's write end."""
    _forward(source.recv, sink.send, n)
    sink.close()


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
