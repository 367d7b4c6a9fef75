"""The figures (table rows) and how each implementation is measured for them.

`FIGURES` maps a figure name to a `Figure` whose `runners` map an implementation name to a
coroutine function `runner(sizes) -> Measurement`. A figure without a runner for some
implementation shows "n/a" there. To add a figure, write one runner per implementation and
register it::

    FIGURES["lock"] = Figure(
        name="lock", unit="µs", better="lower",
        about="median uncontended acquire+release from async code",
        runners={"aioproc": lock_aioproc, "mp_ipc": lock_mp},
    )

and add any new non-pool peer to `_impls.IMPLS` with `open_pool=None`. The IPC figures (queue,
child_get, pipeline, lock, event) are measured in `_ipc`, whose functions return
`(value, detail)`; `_ipc_runners` turns them into runners.

Each runner call happens in a fresh event loop (`asyncio.run`) under a timeout; a figure with
`samples > 1` is called that many times and reports the median. With `fresh_process`, every
sample runs in its own interpreter so that process-wide state left by one sample (a started
forkserver, a resource tracker, warm imports) does not flatter the next.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import _curves, _ipc, _memory, _tasks
from ._impls import IMPLS, START_METHODS, Impl, PoolOps
from ._proc import CpuSnapshot

Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and limits for one run (full or `--quick`)."""

    workers: int
    quick: bool
    timeout_s: float
    latency_warmup: int
    latency_samples: int
    latency_budget_s: float
    concurrent_tasks: int
    map_items: int
    startup_samples: int
    idle_s: float
    scaling_tasks: int
    scaling_task_s: float
    payload_bytes: int
    payload_samples: int
    payload_small_samples: int
    payload_huge_bytes: int
    payload_huge_samples: int
    queue_items: int
    lock_warmup: int
    lock_samples: int
    event_warmup: int
    event_rounds: int

    @classmethod
    def make(cls, *, workers: int, quick: bool, timeout_s: float | None = None) -> Sizes:
        """The full sizes, or the `--quick` ones (whole run under a minute)."""
        if quick:
            return cls(
                workers=workers,
                quick=True,
                timeout_s=timeout_s or 20.0,
                latency_warmup=50,
                latency_samples=300,
                latency_budget_s=3.0,
                concurrent_tasks=1_000,
                map_items=20_000,
                startup_samples=2,
                idle_s=1.0,
                scaling_tasks=4,
                scaling_task_s=0.020,
                payload_bytes=8 * 2**20,
                payload_samples=3,
                payload_small_samples=20,
                payload_huge_bytes=16 * 2**20,  # the 1 GiB rows, kept small
                payload_huge_samples=3,
                queue_items=20_000,
                lock_warmup=200,
                lock_samples=2_000,
                event_warmup=30,
                event_rounds=300,
            )
        return cls(
            workers=workers,
            quick=False,
            timeout_s=timeout_s or 120.0,
            latency_warmup=200,
            latency_samples=2_000,
            latency_budget_s=30.0,
            concurrent_tasks=5_000,
            map_items=100_000,
            startup_samples=5,
            idle_s=10.0,
            scaling_tasks=16,
            scaling_task_s=0.020,
            payload_bytes=64 * 2**20,
            payload_samples=5,
            payload_small_samples=50,
            payload_huge_bytes=2**30,
            payload_huge_samples=2,  # each takes seconds: the figure's timeout covers all
            queue_items=200_000,
            lock_warmup=1_000,
            lock_samples=20_000,
            event_warmup=200,
            event_rounds=2_000,
        )


@dataclass(frozen=True)
class Measurement:
    """One figure for one implementation: the value, plus whatever explains it."""

    value: float
    detail: dict[str, Any] = field(default_factory=dict)


Runner = Callable[[Sizes], Awaitable[Measurement]]


@dataclass(frozen=True)
class Figure:
    """One row of the table.

    Attributes:
        name: Row name, also the `--only` value.
        unit: Unit of the value.
        better: Whether a lower or a higher value is better.
        about: What is measured, one line.
        runners: Implementation name → coroutine function measuring it.
        samples: How many times to call the runner (median reported), given the sizes.
        fresh_process: Run each sample in its own interpreter.
        noise: Values at or below this cannot be told apart (measurement resolution).
        loop: The event loop each runner call runs on (`uvloop`: `uvloop.run`).
        timeout_factor: This figure may take this many times the run's timeout (a figure
            that moves gigabytes per sample).
    """

    name: str
    unit: str
    better: Better
    about: str
    runners: dict[str, Runner]
    samples: Callable[[Sizes], int] = lambda sizes: 1
    fresh_process: bool = False
    noise: float = 0.0
    loop: Literal["asyncio", "uvloop"] = "asyncio"
    timeout_factor: float = 1.0


# -- helpers ------------------------------------------------------------------------------


def _check(got: Any, expected: Any, what: str) -> None:
    if got != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {got!r}")


async def _touch_workers(pool: PoolOps, sizes: Sizes) -> None:
    """Make sure every worker is started and has run something (lazy pools start on demand)."""
    for _ in range(2):
        n = 2 * sizes.workers
        got = await asyncio.gather(*(pool.apply(_tasks.double, x) for x in range(n)))
        _check(list(got), [2 * x for x in range(n)], "warm-up")


async def _sample_latency(apply_one: Callable[[int], Awaitable[int]], sizes: Sizes) -> Measurement:
    """Sequential round trips of the tiny task: warm-up, then timed samples, median in µs."""
    clock = time.perf_counter_ns
    # Both phases stop early once over budget, so a slow peer still finishes in time.
    warm_deadline = clock() + int(sizes.latency_budget_s * 0.25e9)
    for x in range(sizes.latency_warmup):
        _check(await apply_one(x), 2 * x, "warm-up")
        if clock() > warm_deadline:
            break
    samples: list[int] = []
    cpu_before = CpuSnapshot.take(own_first=False)
    deadline = clock() + int(sizes.latency_budget_s * 1e9)
    for x in range(sizes.latency_samples):
        t0 = clock()
        got = await apply_one(x)
        t1 = clock()
        _check(got, 2 * x, "result")
        samples.append(t1 - t0)
        if t1 > deadline and len(samples) >= 30:
            break
    own, others = CpuSnapshot.take(own_first=True).since(cpu_before)
    samples.sort()
    quantiles = statistics.quantiles(samples, n=10)
    return Measurement(
        statistics.median(samples) / 1e3,
        {
            "samples": len(samples),
            "p10_us": quantiles[0] / 1e3,
            "p90_us": quantiles[-1] / 1e3,
            # CPU burnt per round trip by every process involved: far above the latency means
            # someone spins; coarse (clock ticks) for the worker side over short runs.
            "cpu_per_call_us": 1e6 * (own + others) / len(samples),
        },
    )


# -- pool figures -------------------------------------------------------------------------


def _opener(impl: Impl) -> Callable[..., Any]:
    assert impl.open_pool is not None
    return impl.open_pool


async def latency(impl: Impl, sizes: Sizes) -> Measurement:
    """Median round trip of one awaited tiny task, sequential, after warm-up (µs)."""
    async with _opener(impl)(sizes.workers, None) as pool:
        return await _sample_latency(functools.partial(pool.apply, _tasks.double), sizes)


async def _gather_floor(n: int) -> float:
    """Tasks/s of `asyncio.gather` over `n` coroutines that each await a future the loop
    resolves at once: the event loop's own cost per gathered task, no work, no I/O."""
    loop = asyncio.get_running_loop()

    async def one(x: int) -> int:
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, x)
        return 2 * await future

    await asyncio.gather(*(one(x) for x in range(100)))  # warm
    t0 = time.perf_counter()
    await asyncio.gather(*(one(x) for x in range(n)))
    return n / (time.perf_counter() - t0)


async def concurrent(impl: Impl, sizes: Sizes) -> Measurement:
    """Many `apply` calls gathered at once, the async-server pattern (tasks/s).

    The detail has the loop's own floor measured just before in the same loop
    (`_gather_floor`): what gathering that many tasks costs with nothing behind them, so
    the share of the time that is the loop's and the share that is the library's show.
    """
    n = sizes.concurrent_tasks
    floor = await _gather_floor(n)
    async with _opener(impl)(sizes.workers, None) as pool:
        await _touch_workers(pool, sizes)
        t0 = time.perf_counter()
        got = await asyncio.gather(*(pool.apply(_tasks.double, x) for x in range(n)))
        seconds = time.perf_counter() - t0
    _check(list(got), [2 * x for x in range(n)], "results")
    loop_s = n / floor
    return Measurement(
        n / seconds,
        {
            "tasks": n,
            "seconds": seconds,
            "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "loop_floor_tasks_per_s": floor,
            "loop_share": loop_s / seconds,  # of the time, what the bare gather costs
        },
    )


async def map_(impl: Impl, sizes: Sizes) -> Measurement:
    """`map` over many tiny items with the implementation's default chunking (tasks/s)."""
    items = list(range(sizes.map_items))
    expected = [2 * x for x in items]
    async with _opener(impl)(sizes.workers, None) as pool:
        await _touch_workers(pool, sizes)
        warm = items[:1_000]
        _check(await pool.map(_tasks.double, warm), expected[:1_000], "warm-up")
        t0 = time.perf_counter()
        got = await pool.map(_tasks.double, items)
        seconds = time.perf_counter() - t0
    if list(got) != expected:  # not via _check: no 100,000-item message
        raise AssertionError("map results differ from the expected ones")
    return Measurement(len(items) / seconds, {"items": len(items), "seconds": seconds})


async def startup(impl: Impl, start_method: str | None, sizes: Sizes) -> Measurement:
    """Pool creation to first result (ms); teardown is not counted."""
    t0 = time.perf_counter()
    async with _opener(impl)(sizes.workers, start_method) as pool:
        got = await pool.apply(_tasks.double, 21)
        seconds = time.perf_counter() - t0
    _check(got, 42, "result")
    return Measurement(seconds * 1e3, {"start_method": start_method or impl.default_start})


async def idle(impl: Impl, sizes: Sizes) -> Measurement:
    """CPU burnt by an idle pool, this process plus every descendant (% of one core)."""
    async with _opener(impl)(sizes.workers, None) as pool:
        await _touch_workers(pool, sizes)
        before = CpuSnapshot.take(own_first=False)
        t0 = time.perf_counter()
        await asyncio.sleep(sizes.idle_s)  # the idle window itself, not a poll
        wall = time.perf_counter() - t0
        after = CpuSnapshot.take(own_first=True)
    own, others = after.since(before)
    return Measurement(
        100 * (own + others) / wall,
        {
            "parent_pct": 100 * own / wall,
            "descendants_pct": 100 * others / wall,
            "descendants": len(after.others),
            "seconds": wall,
        },
    )


def _calibrate_burn(target_s: float) -> int:
    """The `burn` argument that takes about `target_s` here, in this process."""
    probe = 50_000
    best = min(_timed(_tasks.burn, probe) for _ in range(3))
    return max(1_000, int(probe * target_s / best))


def _timed(fn: Callable[[int], Any], arg: int) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


async def scaling(impl: Impl, sizes: Sizes) -> Measurement:
    """CPU-bound tasks on the pool vs the same tasks run one after another here (speed-up x).

    Both sides take their best of a few runs, so a burst of unrelated load on the machine
    does not pass for a scaling effect.
    """
    n = _calibrate_burn(sizes.scaling_task_s)
    k = sizes.scaling_tasks
    expected = _tasks.burn(n)
    # Sequential baseline first, before any pool exists to compete for the CPU.
    one_task = min(_timed(_tasks.burn, n) for _ in range(k))
    pool_runs: list[float] = []
    async with _opener(impl)(sizes.workers, None) as pool:
        await _touch_workers(pool, sizes)
        for _ in range(_SCALING_RUNS):
            t0 = time.perf_counter()
            got = await asyncio.gather(*(pool.apply(_tasks.burn, n) for _ in range(k)))
            pool_runs.append(time.perf_counter() - t0)
            _check(list(got), [expected] * k, "results")
    return Measurement(
        k * one_task / min(pool_runs),
        {"tasks": k, "task_ms": 1e3 * one_task, "pool_runs_s": pool_runs},
    )


_SCALING_RUNS = 3


PayloadSize = Literal["main", "1MiB", "1GiB"]


def _payload_plan(sizes: Sizes, which: PayloadSize) -> tuple[int, int]:
    """(bytes, samples) of a payload row."""
    if which == "1MiB":
        return 2**20, sizes.payload_small_samples
    if which == "1GiB":
        return sizes.payload_huge_bytes, sizes.payload_huge_samples
    return sizes.payload_bytes, sizes.payload_samples


def _memcpy_s(data: bytes, samples: int) -> float:
    """Median time of one copy of `data` into new memory in this process (`bytearray(data)`:
    a memcpy plus the page faults of fresh memory, as any copy a receiver makes): the floor
    of a transfer that copies once."""
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        copy = bytearray(data)
        times.append(time.perf_counter() - t0)
        del copy
    return statistics.median(times)


async def _time_calls(call: Callable[[], Awaitable[Any]], expected: Any, samples: int) -> float:
    """Median seconds of `call()` (after one warm-up call), checking each answer."""
    _check(await call(), expected, "warm-up")
    times: list[float] = []
    for _ in range(samples):
        t0 = time.perf_counter()
        got = await call()
        times.append(time.perf_counter() - t0)
        _check(got, expected, "result")
        del got
    return statistics.median(times)


async def payload(impl: Impl, which: PayloadSize, results: bool, sizes: Sizes) -> Measurement:
    """A large `bytes` to a worker, its length back; or (`results`) a large `bytes` back
    from a worker (GB/s, decimal). The same run measures this process's memcpy of that
    size, the floor of a transfer that copies once. aioproc also reports its two other
    ways: the same bytes as a `memoryview` (copied in, mapped out: one copy), and an
    `aioproc.shared_buffer` the producer fills in place (no copy)."""
    size, samples = _payload_plan(sizes, which)
    data = _tasks.filled(size)
    detail: dict[str, Any] = {"bytes": size}
    async with _opener(impl)(sizes.workers, None) as pool:
        await _touch_workers(pool, sizes)
        # A call that moves nothing, in the same pool: what no payload can go below.
        tiny = await _time_calls(functools.partial(pool.apply, _tasks.double, 1), 2, 20)
        detail["tiny_call_s"] = tiny
        if results:
            ok = await pool.apply(_tasks.blob, size)
            _check(len(ok), size, "warm-up")
            blob = ok
            del ok
            median = await _time_calls(
                functools.partial(pool.apply, _tasks.blob, size), blob, samples
            )
        else:
            median = await _time_calls(
                functools.partial(pool.apply, _tasks.length, data), size, samples
            )
            blob = data
        if impl.name == "aioproc":
            if results:
                view = await _time_calls(
                    functools.partial(pool.apply, _tasks.blob_view, size), blob, samples
                )
            else:
                view = await _time_calls(
                    functools.partial(pool.apply, _tasks.length, memoryview(data)),
                    size,
                    samples,
                )
            detail["memoryview_gbps"] = size / view / 1e9
            import aioproc  # only for aioproc's runs

            if results:
                shared = await _time_calls(
                    functools.partial(pool.apply, _tasks.blob_shared, size), blob, samples
                )
            else:
                buf = aioproc.shared_buffer(size)
                buf[:] = data
                shared = await _time_calls(
                    functools.partial(pool.apply, _tasks.length, buf), size, samples
                )
                del buf
            detail["shared_buffer_gbps"] = size / shared / 1e9
        del blob
    memcpy = _memcpy_s(data, max(samples, 3))
    gbps = size / median / 1e9
    detail.update(
        median_s=median,
        memcpy_gbps=size / memcpy / 1e9,
        vs_memcpy=memcpy / median,
    )
    for way in ("memoryview", "shared_buffer"):
        if f"{way}_gbps" in detail:
            detail[f"{way}_vs_memcpy"] = detail[f"{way}_gbps"] / detail["memcpy_gbps"]
    return Measurement(gbps, detail)


# -- the raw pipe floor --------------------------------------------------------------------

_FRAME = struct.Struct("<q")
ROOT = Path(__file__).resolve().parent.parent
"""The project root (the directory holding `benchmarks/`)."""


def _start_echo_child(rfd: int, wfd: int) -> subprocess.Popen[bytes]:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r});"
        f" from benchmarks._tasks import pipe_echo; pipe_echo({rfd}, {wfd})"
    )
    return subprocess.Popen([sys.executable, "-c", code], pass_fds=(rfd, wfd))


def _stop_echo_child(child: subprocess.Popen[bytes]) -> None:
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


async def latency_raw_pipe(sizes: Sizes) -> Measurement:
    """The latency floor: blocking echo child, parent awaiting replies via `add_reader`."""
    loop = asyncio.get_running_loop()
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    child = _start_echo_child(req_r, rep_w)
    os.close(req_r)
    os.close(rep_w)
    os.set_blocking(rep_r, False)
    waiter: asyncio.Future[int] | None = None

    def on_reply() -> None:
        data = os.read(rep_r, _FRAME.size)  # 8 bytes on a pipe arrive whole
        if waiter is None or waiter.done():
            return
        if len(data) < _FRAME.size:
            waiter.set_exception(EOFError("echo child went away"))
        else:
            waiter.set_result(_FRAME.unpack(data)[0])

    def apply_one(x: int) -> asyncio.Future[int]:
        nonlocal waiter
        waiter = loop.create_future()
        os.write(req_w, _FRAME.pack(x))
        return waiter

    loop.add_reader(rep_r, on_reply)
    try:
        return await _sample_latency(apply_one, sizes)
    finally:
        loop.remove_reader(rep_r)
        os.close(req_w)  # EOF: the child returns
        os.close(rep_r)
        _stop_echo_child(child)


# -- the table of figures ------------------------------------------------------------------


def _for_pools(fn: Callable[..., Awaitable[Measurement]], *args: Any) -> dict[str, Runner]:
    return {
        impl.name: functools.partial(fn, impl, *args)
        for impl in IMPLS.values()
        if impl.open_pool is not None
    }


_PAYLOAD_ROWS: tuple[tuple[str, PayloadSize, bool, str], ...] = (
    ("payload", "main", False, "a 64 MiB `bytes` argument (--quick: 8 MiB), its length back"),
    ("payload.results", "main", True, "a 64 MiB `bytes` result (--quick: 8 MiB)"),
    ("payload.1MiB", "1MiB", False, "a 1 MiB `bytes` argument, its length back"),
    ("payload.1MiB.results", "1MiB", True, "a 1 MiB `bytes` result"),
    ("payload.1GiB", "1GiB", False, "a 1 GiB `bytes` argument (--quick: 16 MiB)"),
    ("payload.1GiB.results", "1GiB", True, "a 1 GiB `bytes` result (--quick: 16 MiB)"),
)
"""The payload rows: name, size, results (else arguments), what is measured."""


def _method_runners(
    fn: Callable[[Impl, str | None, Sizes], Awaitable[Measurement]], method: str
) -> dict[str, Runner]:
    """Runners of `fn(impl, start_method, sizes)` for every pool that can use `method`."""
    runners: dict[str, Runner] = {}
    for impl in IMPLS.values():
        if impl.open_pool is None:
            continue
        if method in impl.start_methods:
            runners[impl.name] = functools.partial(fn, impl, method)
        elif impl.default_start == method:  # e.g. anyio: fresh interpreters, i.e. spawn
            runners[impl.name] = functools.partial(fn, impl, None)
    return runners


async def _from_ipc(
    measure: Callable[[Sizes], Awaitable[_ipc.Result]], sizes: Sizes
) -> Measurement:
    value, detail = await measure(sizes)
    return Measurement(value, detail)


def _ipc_runners(**measures: Callable[[Sizes], Awaitable[_ipc.Result]]) -> dict[str, Runner]:
    """Runners from `_ipc` functions, by implementation name."""
    return {impl: functools.partial(_from_ipc, measure) for impl, measure in measures.items()}


def _startup_samples(sizes: Sizes) -> int:
    return sizes.startup_samples


def _memory_samples(sizes: Sizes) -> int:
    return 1 if sizes.quick else 3


def _by_start_method(
    name: str,
    unit: str,
    about: str,
    about_method: str,
    measure: Callable[[Impl, str | None, Sizes], Awaitable[Measurement]],
    samples: Callable[[Sizes], int],
) -> tuple[Figure, ...]:
    """`name` with each implementation's default start method, then `name.METHOD` for each
    start method (`about_method` says what with `{method}`), each sample in a fresh
    interpreter."""
    return (
        Figure(
            name=name,
            unit=unit,
            better="lower",
            about=about,
            runners=_for_pools(measure, None),
            samples=samples,
            fresh_process=True,
        ),
        *(
            Figure(
                name=f"{name}.{method}",
                unit=unit,
                better="lower",
                about=about_method.format(method=repr(method)),
                runners=_method_runners(measure, method),
                samples=samples,
                fresh_process=True,
            )
            for method in START_METHODS
        ),
    )


FIGURES: dict[str, Figure] = {
    figure.name: figure
    for figure in (
        Figure(
            name="latency",
            unit="µs",
            better="lower",
            about="median round trip of one awaited tiny task, sequential, after warm-up",
            runners={**_for_pools(latency), "raw_pipe": latency_raw_pipe},
        ),
        Figure(
            name="concurrent",
            unit="tasks/s",
            better="higher",
            about="tiny `apply` calls gathered at once",
            runners=_for_pools(concurrent),
        ),
        Figure(
            name="concurrent.uvloop",
            unit="tasks/s",
            better="higher",
            about="`concurrent` with the event loop of uvloop",
            runners=_for_pools(concurrent),
            loop="uvloop",
        ),
        Figure(
            name="map",
            unit="tasks/s",
            better="higher",
            about="`map` over tiny items, default chunking",
            runners=_for_pools(map_),
        ),
        *_by_start_method(
            "startup",
            "ms",
            "pool creation to first result, default start method, fresh interpreter each",
            "pool creation to first result with start method {method}",
            startup,
            _startup_samples,
        ),
        *_by_start_method(
            "memory",
            "MiB",
            "PSS of the whole process tree (this process + all descendants), pool open"
            " after some tasks, default start method, fresh interpreter each",
            "PSS of the whole process tree with start method {method}",
            _memory.memory,
            _memory_samples,
        ),
        Figure(
            name="idle",
            unit="% core",
            better="lower",
            about="CPU burnt by an idle pool (this process + all descendants)",
            runners=_for_pools(idle),
            noise=0.1,  # /proc counts whole clock ticks; the idle event loop itself is not 0
        ),
        Figure(
            name="scaling",
            unit="x",
            better="higher",
            about="CPU-bound tasks on the pool vs sequential in one process",
            runners=_for_pools(scaling),
        ),
        *(
            Figure(
                name=name,
                unit="GB/s",
                better="higher",
                about=about,
                runners=_for_pools(payload, which, results),
                # Each sample moves 1 GiB (several ways for aioproc): seconds apiece on a
                # busy machine.
                timeout_factor=4.0 if which == "1GiB" else 1.0,
            )
            for name, which, results, about in _PAYLOAD_ROWS
        ),
        Figure(
            name="queue",
            unit="msgs/s",
            better="higher",
            about="small ints from a child producer to an async consumer in the parent,"
            " child's first put to parent's last get",
            runners=_ipc_runners(
                aioproc=_ipc.queue_aioproc,
                mp_ipc=_ipc.queue_mp,
                mp_pipe=_ipc.queue_mp_pipe,
                aioprocessing=_ipc.queue_aioprocessing,
            ),
        ),
        Figure(
            name="child_get",
            unit="msgs/s",
            better="higher",
            about="small ints from the parent to a child consumer taking each with a blocking"
            " get, parent's first put to the child's last get",
            runners=_ipc_runners(
                aioproc=_ipc.child_get_aioproc,
                mp_ipc=_ipc.child_get_mp,
                mp_pipe=_ipc.child_get_mp_pipe,
                aioprocessing=_ipc.child_get_aioprocessing,
            ),
        ),
        Figure(
            name="pipeline",
            unit="msgs/s",
            better="higher",
            about="small ints through producer child → transformer child → async parent over"
            " two queues, producer's first put to the parent's last get",
            runners=_ipc_runners(
                aioproc=_ipc.pipeline_aioproc,
                mp_ipc=_ipc.pipeline_mp,
                mp_pipe=_ipc.pipeline_mp_pipe,
                aioprocessing=_ipc.pipeline_aioprocessing,
            ),
        ),
        Figure(
            name="lock",
            unit="µs",
            better="lower",
            about="median uncontended acquire + release from async code",
            runners=_ipc_runners(
                aioproc=_ipc.lock_aioproc,
                mp_ipc=_ipc.lock_mp,
                aioprocessing=_ipc.lock_aioprocessing,
            ),
        ),
        Figure(
            name="event",
            unit="µs",
            better="lower",
            about="median set() in one process to await wait() returning in another"
            " (half a two-event ping-pong with a child)",
            runners=_ipc_runners(
                aioproc=_ipc.event_aioproc,
                mp_ipc=_ipc.event_mp,
                aioprocessing=_ipc.event_aioprocessing,
            ),
        ),
        # How cost grows with the work: measured in `_curves`, every point in the detail.
        *(
            Figure(
                name=curve.name,
                unit=curve.unit,
                better=curve.better,
                about=curve.about,
                runners=_ipc_runners(**curve.measures),
            )
            for curve in _curves.CURVES
        ),
    )
}
"""Every figure, in table order."""


def select(names: list[str] | None) -> list[str]:
    """Figure names matching `--only` (`startup` also selects `startup.*`), in table order.

    Raises:
        ValueError: A name matches no figure.
    """
    if not names:
        return list(FIGURES)
    unknown = [n for n in names if not any(f == n or f.startswith(n + ".") for f in FIGURES)]
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    return [f for f in FIGURES if any(f == n or f.startswith(n + ".") for n in names)]
