"""The IPC figures: queue throughput, lock and event latency, each driven from asyncio.

Every function here measures one implementation and returns `(value, detail)`; `_figures`
wraps them into runners. The peers are driven the way asyncio users drive them: the blocking
`multiprocessing` calls through `loop.run_in_executor(None, ...)`, aioprocessing through its
`coro_*` methods, the hand-rolled pipe through `loop.add_reader`.

How each figure is timed, the same way for every implementation:

- queue: the producer child puts a readiness item (so connections and feeder threads are set
  up), reads CLOCK_MONOTONIC, puts `n` small ints, then sends that start time as its last
  item. The parent reads CLOCK_MONOTONIC when the `n`-th int arrives. The clock is the same
  for every process on the machine, so `n / (last arrival - child's start)` is the rate from
  the child's first put to the parent's last get; process start-up is outside it.
- lock: `await acquire(); release()` in the parent, nobody else using the lock; median of
  many samples after warm-up.
- event: ping-pong on two events with a child: the parent sets `ping` and awaits `pong`; the
  child (blocking code) waits for `ping`, clears it and sets `pong`. A round trip is two
  cross-process wake-ups timed on one clock; the figure is half the median round trip.

Cleanup on failure or timeout matters more than usual: a blocking `get`/`wait` left in an
executor thread would keep the process from exiting, so the error paths feed it what it waits
for before stopping the child.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import statistics
import time
from typing import TYPE_CHECKING, Any

from . import _tasks

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from ._figures import Sizes

Result = tuple[float, dict[str, Any]]
"""A figure's value and the detail that explains it."""

_JOIN_S = 10.0
"""How long a finished producer/echo child may take to exit before it is terminated."""


def _check(got: Any, expected: Any, what: str) -> None:
    if got != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {got!r}")


def _mp_start_method() -> str:
    chosen = multiprocessing.get_start_method(allow_none=True)
    return chosen or multiprocessing.get_all_start_methods()[0]


def _stop(proc: Any, *, failed: bool) -> None:
    """Reap a `multiprocessing.Process` (or `AioProcess`); terminate it if it lingers."""
    if failed:
        proc.terminate()
    proc.join(_JOIN_S)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if not failed:
        _check(proc.exitcode, 0, "child exit code")


def _spread_us(samples_ns: list[int], scale: float = 1.0) -> dict[str, float]:
    """p10 / p90 of the samples in µs (times `scale`)."""
    quantiles = statistics.quantiles(samples_ns, n=10)
    return {"p10_us": scale * quantiles[0] / 1e3, "p90_us": scale * quantiles[-1] / 1e3}


# -- queue ----------------------------------------------------------------------------------


class _EndOfStream:
    def __repr__(self) -> str:
        return "<end of stream>"


_EOF = _EndOfStream()


async def _consume(get: Callable[[], Awaitable[Any]], n: int) -> Result:
    """Receive the readiness item, `n` ints in order, then the producer's timestamps."""
    clock = _tasks.clock
    _check(await get(), _tasks.QUEUE_READY, "readiness item")
    _check(await get(), 0, "item 0")
    first = clock()
    for i in range(1, n):
        got = await get()
        if got != i:  # inline: this loop is what is measured
            _check(got, i, f"item {i}")
    last = clock()
    start, end_of_puts = await get()
    seconds = last - start
    return n / seconds, {
        "items": n,
        "seconds": seconds,
        "producer_s": end_of_puts - start,
        "first_item_ms": 1e3 * (first - start),
        # Not the figure: timed from the consumer's first get instead, this flatters whoever
        # buffers the stream before handing over item 0 (the hand-rolled pipe reads everything
        # available per wake-up).
        "rate_from_first_get": (n - 1) / (last - first),
    }


async def queue_aioproc(sizes: Sizes) -> Result:
    """`aioproc.Queue`: a pool task puts with `q.sync.put`, the parent `await q.get()`."""
    import aioproc

    n = sizes.queue_items
    q: aioproc.Queue[Any] = aioproc.Queue()
    async with aioproc.ProcessPool(1) as pool:
        producer = pool.submit(_tasks.queue_produce_aioproc, q, n)
        value, detail = await _consume(q.get, n)
        _check(await producer, n, "producer")
    return value, {**detail, "producer_start": "forkserver (aioproc default)"}


async def queue_mp(sizes: Sizes) -> Result:
    """`multiprocessing.Queue`, parent `await loop.run_in_executor(None, q.get)` per item."""
    n = sizes.queue_items
    loop = asyncio.get_running_loop()
    q: multiprocessing.Queue[Any] = multiprocessing.Queue()
    proc = multiprocessing.Process(target=_tasks.queue_produce_mp, args=(q, n))
    proc.start()
    failed = True
    try:
        result = await _consume(functools.partial(loop.run_in_executor, None, q.get), n)
        failed = False
    finally:
        if failed:
            q.put(_tasks.QUEUE_READY)  # a get left blocked in an executor thread returns
            q.cancel_join_thread()
        _stop(proc, failed=failed)
    value, detail = result
    return value, {**detail, "producer_start": _mp_start_method()}


async def queue_aioprocessing(sizes: Sizes) -> Result:
    """`aioprocessing.AioQueue` filled by an `AioProcess`, parent `await q.coro_get()`."""
    import aioprocessing  # type: ignore[import-untyped]

    n = sizes.queue_items
    q = aioprocessing.AioQueue()
    proc = aioprocessing.AioProcess(target=_tasks.queue_produce_mp, args=(q, n))
    proc.start()
    failed = True
    try:
        result = await _consume(q.coro_get, n)
        failed = False
    finally:
        if failed:
            q.put(_tasks.QUEUE_READY)  # a get left blocked in aioprocessing's thread returns
            q.cancel_join_thread()
        _stop(proc, failed=failed)
    value, detail = result
    return value, {**detail, "producer_start": _mp_start_method()}


async def queue_mp_pipe(sizes: Sizes) -> Result:
    """Hand-rolled: `mp.Pipe(duplex=False)`, `loop.add_reader` → `recv()` while `poll()`."""
    n = sizes.queue_items
    reader, writer = multiprocessing.Pipe(duplex=False)
    proc = multiprocessing.Process(target=_tasks.queue_produce_pipe, args=(writer, n))
    proc.start()
    writer.close()  # the child holds the only write end: its exit is our EOF
    value, detail = await _consume_pipe(reader, n, [proc])
    return value, {**detail, "producer_start": _mp_start_method()}


async def _consume_pipe(reader: Any, n: int, procs: list[Any]) -> Result:
    """`_consume` on the read end of a pipe through `loop.add_reader`; `procs` are reaped.

    The reader callback feeds an `asyncio.Queue`, which the consumer awaits item by item.
    """
    loop = asyncio.get_running_loop()
    fd = reader.fileno()
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def on_readable() -> None:
        try:
            while reader.poll():
                inbox.put_nowait(reader.recv())
        except (EOFError, OSError):
            loop.remove_reader(fd)
            inbox.put_nowait(_EOF)

    loop.add_reader(fd, on_readable)
    failed = True
    try:
        result = await _consume(inbox.get, n)
        failed = False
    finally:
        loop.remove_reader(fd)
        reader.close()
        for proc in procs:
            _stop(proc, failed=failed)
    return result


# -- child consumers: one child taking items, and a pipeline of two children ---------------


async def _produce(put: Callable[[Any], Awaitable[None]], n: int) -> None:
    """Put `n` ints, then `(start, end)` of the puts on the machine's clock."""
    clock = _tasks.clock
    start = clock()
    for i in range(n):
        await put(i)
    await put((start, clock()))


def _child_result(n: int, seconds: float, start: str) -> Result:
    return n / seconds, {"items": n, "seconds": seconds, "consumer_start": start}


async def child_get_aioproc(sizes: Sizes) -> Result:
    """`aioproc.Queue`: the parent `await q.put()`s, an `aioproc.Process` child takes each
    item with a blocking `q.sync.get()`."""
    import aioproc

    n = sizes.queue_items
    q: aioproc.Queue[Any] = aioproc.Queue()
    back: aioproc.Queue[Any] = aioproc.Queue()
    async with aioproc.Process(target=_tasks.child_get_aioproc, args=(q, back, n)) as child:
        await q.put(_tasks.QUEUE_READY)
        _check(await back.get(), _tasks.QUEUE_READY, "consumer's readiness")
        await _produce(q.put, n)
        seconds = await child.result()
    return _child_result(n, seconds, "forkserver (aioproc default)")


async def _child_get_mp_like(queue_type: Callable[[], Any], sizes: Sizes) -> Result:
    n = sizes.queue_items
    loop = asyncio.get_running_loop()
    q, back = queue_type(), queue_type()
    proc = multiprocessing.Process(target=_tasks.child_get_mp, args=(q, back, n))
    proc.start()
    failed = True
    try:
        q.put(_tasks.QUEUE_READY)
        ready = await loop.run_in_executor(None, back.get, True, _JOIN_S * 6)
        _check(ready, _tasks.QUEUE_READY, "consumer's readiness")

        async def put(item: Any) -> None:
            q.put(item)  # never blocks: a feeder thread writes the pipe

        await _produce(put, n)
        seconds = await loop.run_in_executor(None, back.get, True, _JOIN_S * 6)
        failed = False
    finally:
        if failed:
            for channel in (q, back):
                channel.cancel_join_thread()
        _stop(proc, failed=failed)
    return _child_result(n, seconds, _mp_start_method())


async def child_get_mp(sizes: Sizes) -> Result:
    """`multiprocessing.Queue`: the parent `q.put()`s (it never blocks), a
    `multiprocessing.Process` child takes each item with a blocking `q.get()`."""
    return await _child_get_mp_like(multiprocessing.Queue, sizes)


async def child_get_aioprocessing(sizes: Sizes) -> Result:
    """`aioprocessing.AioQueue`: as `multiprocessing.Queue` (its child side is blocking)."""
    import aioprocessing

    return await _child_get_mp_like(aioprocessing.AioQueue, sizes)


async def child_get_mp_pipe(sizes: Sizes) -> Result:
    """Hand-rolled: `mp.Pipe(duplex=False)`; the parent's `send()`s run in a thread (a full
    pipe blocks them), the child `recv()`s."""
    n = sizes.queue_items
    loop = asyncio.get_running_loop()
    reader, writer = multiprocessing.Pipe(duplex=False)
    back_reader, back_writer = multiprocessing.Pipe(duplex=False)
    proc = multiprocessing.Process(target=_tasks.child_get_pipe, args=(reader, back_writer, n))
    proc.start()
    reader.close()
    back_writer.close()
    failed = True
    try:
        writer.send(_tasks.QUEUE_READY)
        ready = await loop.run_in_executor(None, back_reader.recv)
        _check(ready, _tasks.QUEUE_READY, "consumer's readiness")

        def produce() -> None:
            clock = _tasks.clock
            start = clock()
            for i in range(n):
                writer.send(i)
            writer.send((start, clock()))

        await loop.run_in_executor(None, produce)
        seconds = await loop.run_in_executor(None, back_reader.recv)
        failed = False
    finally:
        writer.close()
        back_reader.close()
        _stop(proc, failed=failed)
    return _child_result(n, seconds, _mp_start_method())


async def pipeline_aioproc(sizes: Sizes) -> Result:
    """Two `aioproc.Queue`s: a producer task → a transformer task (blocking `sync.get` and
    `sync.put`) → the parent's `await q.get()`."""
    import aioproc

    n = sizes.queue_items
    first: aioproc.Queue[Any] = aioproc.Queue()
    second: aioproc.Queue[Any] = aioproc.Queue()
    async with aioproc.ProcessPool(2) as pool:
        middle = pool.submit(_tasks.transform_aioproc, first, second, n)
        producer = pool.submit(_tasks.queue_produce_aioproc, first, n)
        value, detail = await _consume(second.get, n)
        _check(await producer, n, "producer")
        _check(await middle, n, "transformer")
    return value, {**detail, "children_start": "forkserver (aioproc default)"}


async def _pipeline_mp_like(
    queue_type: Callable[[], Any], get: Callable[[Any], Callable[[], Awaitable[Any]]], n: int
) -> Result:
    first, second = queue_type(), queue_type()
    middle = multiprocessing.Process(target=_tasks.transform_mp, args=(first, second, n))
    producer = multiprocessing.Process(target=_tasks.queue_produce_mp, args=(first, n))
    middle.start()
    producer.start()
    failed = True
    try:
        result = await _consume(get(second), n)
        failed = False
    finally:
        if failed:
            for channel in (first, second):
                channel.cancel_join_thread()
        _stop(producer, failed=failed)
        _stop(middle, failed=failed)
    value, detail = result
    return value, {**detail, "children_start": _mp_start_method()}


async def pipeline_mp(sizes: Sizes) -> Result:
    """Two `multiprocessing.Queue`s and two `multiprocessing.Process` children; the parent
    `await loop.run_in_executor(None, q.get)` per item."""
    loop = asyncio.get_running_loop()
    return await _pipeline_mp_like(
        multiprocessing.Queue,
        lambda q: functools.partial(loop.run_in_executor, None, q.get),
        sizes.queue_items,
    )


async def pipeline_aioprocessing(sizes: Sizes) -> Result:
    """Two `aioprocessing.AioQueue`s (blocking calls in the children); the parent
    `await q.coro_get()`."""
    import aioprocessing

    return await _pipeline_mp_like(aioprocessing.AioQueue, lambda q: q.coro_get, sizes.queue_items)


async def pipeline_mp_pipe(sizes: Sizes) -> Result:
    """Two `mp.Pipe(duplex=False)`s; the parent reads the second with `loop.add_reader`."""
    n = sizes.queue_items
    first_r, first_w = multiprocessing.Pipe(duplex=False)
    reader, writer = multiprocessing.Pipe(duplex=False)
    middle = multiprocessing.Process(target=_tasks.transform_pipe, args=(first_r, writer, n))
    producer = multiprocessing.Process(target=_tasks.queue_produce_pipe, args=(first_w, n))
    middle.start()
    producer.start()
    for conn in (first_r, first_w, writer):
        conn.close()  # the children hold them: their exits are the EOFs
    value, detail = await _consume_pipe(reader, n, [producer, middle])
    return value, {**detail, "children_start": _mp_start_method()}


# -- lock -----------------------------------------------------------------------------------


async def _sample_lock(
    acquire: Callable[[], Awaitable[Any]], release: Callable[[], Any], sizes: Sizes
) -> list[int]:
    """Warm-up, then timed `await acquire(); release()` pairs (ns each)."""
    clock = time.perf_counter_ns
    for _ in range(sizes.lock_warmup):
        await acquire()
        release()
    samples: list[int] = []
    for _ in range(sizes.lock_samples):
        t0 = clock()
        await acquire()
        release()
        samples.append(clock() - t0)
    return samples


async def _sample_async_with(lock: AbstractAsyncContextManager[Any], sizes: Sizes) -> list[int]:
    """The same pair written as `async with lock: pass` (ns each)."""
    clock = time.perf_counter_ns
    for _ in range(sizes.lock_warmup):
        async with lock:
            pass
    samples: list[int] = []
    for _ in range(sizes.lock_samples):
        t0 = clock()
        async with lock:
            pass
        samples.append(clock() - t0)
    return samples


def _lock_result(samples: list[int], async_with: list[int] | None = None) -> Result:
    detail: dict[str, Any] = {"samples": len(samples), **_spread_us(samples)}
    if async_with is not None:
        detail["async_with_us"] = statistics.median(async_with) / 1e3
    return statistics.median(samples) / 1e3, detail


async def lock_aioproc(sizes: Sizes) -> Result:
    """`aioproc.Lock`: `await lock.acquire(); lock.release()`; also `async with lock`.

    The lock lives in the hub, which this process hosts (it created the first IPC object):
    the figure is aioproc's local path, with no child involved, like the peers'.
    """
    import aioproc

    lock = aioproc.Lock()
    samples = await _sample_lock(lock.acquire, lock.release, sizes)
    async_with = await _sample_async_with(lock, sizes)
    _check(lock.locked(), False, "lock state after the samples")
    return _lock_result(samples, async_with)


async def lock_mp(sizes: Sizes) -> Result:
    """`multiprocessing.Lock`: `await loop.run_in_executor(None, lock.acquire); lock.release()`."""
    loop = asyncio.get_running_loop()
    lock = multiprocessing.Lock()
    samples = await _sample_lock(
        functools.partial(loop.run_in_executor, None, lock.acquire), lock.release, sizes
    )
    _check(lock.acquire(False), True, "lock free after the samples")
    lock.release()
    return _lock_result(samples)


async def lock_aioprocessing(sizes: Sizes) -> Result:
    """`aioprocessing.AioLock`: `await lock.coro_acquire(); lock.release()`; also `async with`."""
    import aioprocessing

    lock = aioprocessing.AioLock()
    samples = await _sample_lock(lock.coro_acquire, lock.release, sizes)
    async_with = await _sample_async_with(lock, sizes)
    _check(lock.acquire(False), True, "lock free after the samples")
    lock.release()
    return _lock_result(samples, async_with)


# -- event ----------------------------------------------------------------------------------


async def _ping_pong(
    ping_set: Callable[[], Any],
    pong_wait: Callable[[], Awaitable[Any]],
    pong_clear: Callable[[], Any],
    sizes: Sizes,
) -> Result:
    """Set ping, await pong, clear pong: warm-up, then timed rounds; half the median (µs)."""
    clock = time.perf_counter_ns
    warmup = sizes.event_warmup
    samples: list[int] = []
    for r in range(warmup + sizes.event_rounds):
        t0 = clock()
        ping_set()
        woke = await pong_wait()
        t1 = clock()
        _check(woke, True, "pong wait")
        pong_clear()
        if r >= warmup:
            samples.append(t1 - t0)
    round_trip = statistics.median(samples)
    return round_trip / 2e3, {
        "rounds": len(samples),
        "round_trip_us": round_trip / 1e3,
        **_spread_us(samples, scale=0.5),
    }


def _echo_timeout(sizes: Sizes) -> float:
    """How long the echo child waits for one ping before giving up (a safety net)."""
    return sizes.timeout_s + 5.0


async def event_aioproc(sizes: Sizes) -> Result:
    """`aioproc.Event`: the echo is a pool task using `.sync`; the parent `await pong.wait()`."""
    import aioproc

    total = sizes.event_warmup + sizes.event_rounds
    ping, pong = aioproc.Event(), aioproc.Event()
    async with aioproc.ProcessPool(1) as pool:
        echo = pool.submit(_tasks.event_echo_aioproc, ping, pong, total, _echo_timeout(sizes))
        result = await _ping_pong(ping.set, pong.wait, pong.clear, sizes)
        _check(await echo, total, "rounds answered")
    return result


async def event_mp(sizes: Sizes) -> Result:
    """`multiprocessing.Event`: parent `await loop.run_in_executor(None, pong.wait)`."""
    loop = asyncio.get_running_loop()
    total = sizes.event_warmup + sizes.event_rounds
    ping, pong = multiprocessing.Event(), multiprocessing.Event()
    proc = multiprocessing.Process(
        target=_tasks.event_echo_mp, args=(ping, pong, total, _echo_timeout(sizes))
    )
    proc.start()
    failed = True
    try:
        result = await _ping_pong(
            ping.set, functools.partial(loop.run_in_executor, None, pong.wait), pong.clear, sizes
        )
        failed = False
    finally:
        if failed:
            pong.set()  # a wait left blocked in an executor thread returns
        _stop(proc, failed=failed)
    return result


async def event_aioprocessing(sizes: Sizes) -> Result:
    """`aioprocessing.AioEvent`: parent `await pong.coro_wait()`; the echo is an `AioProcess`."""
    import aioprocessing

    total = sizes.event_warmup + sizes.event_rounds
    ping, pong = aioprocessing.AioEvent(), aioprocessing.AioEvent()
    proc = aioprocessing.AioProcess(
        target=_tasks.event_echo_mp, args=(ping, pong, total, _echo_timeout(sizes))
    )
    proc.start()
    failed = True
    try:
        result = await _ping_pong(ping.set, pong.coro_wait, pong.clear, sizes)
        failed = False
    finally:
        if failed:
            pong.set()  # a wait left blocked in aioprocessing's thread returns
        _stop(proc, failed=failed)
    return result
