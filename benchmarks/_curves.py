"""How cost grows with the work: the curve figures (`curves.*`), one row each in the table.

    curves.workers  1 … 2 x cores workers, ~1 ms pure-Python tasks  → tasks/s, speed-up
    curves.payload  1 KiB … 1 GiB `bytes` echoed by a worker      → µs, GB/s, memcpy floor
    curves.gather   100 … 1,000,000 `apply`s gathered at once     → tasks/s, RSS per task
    curves.stream   10,000,000 lazy items through a streaming map → items/s, peak RSS

Each function measures one implementation over the whole range and returns `(value, detail)`
as `_ipc`'s do (`_figures` turns them into runners). `detail["points"]` holds every point of
the curve and `detail["x"]` names the key that is the x axis, for the table's JSON and for
`benchmarks.charts`; `value` is one point, the same for every implementation, so that the
table can still compare them (each figure's `about` says which).

A curve runs under a time budget (below the figure's timeout): before each point the time it
will take is predicted from the previous one, and a point that would not fit is not started;
`detail["not_measured_beyond"]` then names the last size measured, so a slow peer is reported
as such instead of hanging the run or losing the points it did measure.

Memory is the parent's (this child's) resident set: the kernel's high-water mark (VmHWM) is
reset before a window by writing 5 to /proc/self/clear_refs, and read after it; where that is
not allowed, a thread samples VmRSS instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from . import _curve_tasks, _tasks
from ._impls import IMPLS, Impl, PoolOps

if TYPE_CHECKING:
    from types import TracebackType

    from ._figures import Sizes

Result = tuple[float, dict[str, Any]]
"""A figure's value and the detail that explains it (as in `_ipc`)."""

Measure = Callable[["Sizes"], Awaitable[Result]]

KiB = 2**10
MiB = 2**20
GiB = 2**30

# aiomultiprocess runs only coroutine functions: it maps each task to its async twin.
_tasks.ASYNC_TWINS[_curve_tasks.echo] = _curve_tasks.aecho

_PREDICTION_MARGIN = 1.5
"""A point is started only if this many times its predicted duration fits in the budget."""

_BURN_1MS = 20_000
"""`_tasks.burn(20_000)` takes about 1 ms on the 2-vCPU EPYC VM of the committed results;
fixed rather than calibrated per run, so that every implementation gets the same tasks."""

_STREAM_CHUNKSIZE = 1_000
"""The chunk size passed to the peers' streaming maps (aioproc's `imap` adapts its own)."""


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Plan:
    """The curves' sizes for one run, derived from the run's `Sizes` (full or `--quick`)."""

    budget_s: float
    """Time one implementation may spend on one curve (below the figure's timeout)."""
    worker_counts: tuple[int, ...]
    worker_tasks: int
    worker_runs: int
    worker_burn: int
    """The `burn` argument of every task: the same work for every implementation."""
    payload_sizes: tuple[int, ...]
    payload_ref: int
    payload_point_s: float
    payload_max_samples: int
    gather_counts: tuple[int, ...]
    gather_ref: int
    stream_items: int
    stream_ref_items: int

    @classmethod
    def of(cls, sizes: Sizes) -> Plan:
        """The plan for `sizes`; every curve stays within 3/4 of the figure timeout."""
        workers = tuple(range(1, 2 * _cores() + 1))
        ceiling = 0.75 * sizes.timeout_s
        if sizes.quick:
            return cls(
                budget_s=min(8.0, ceiling),
                worker_counts=workers,
                worker_tasks=120,
                worker_runs=2,
                worker_burn=_BURN_1MS,
                payload_sizes=tuple(KiB * 4**k for k in range(9)),  # 1 KiB … 64 MiB
                payload_ref=64 * MiB,
                payload_point_s=0.05,
                payload_max_samples=20,
                gather_counts=(100, 1_000, 10_000),
                gather_ref=10_000,
                stream_items=200_000,
                stream_ref_items=20_000,
            )
        return cls(
            budget_s=ceiling,
            worker_counts=workers,
            worker_tasks=1_000,
            worker_runs=3,
            worker_burn=_BURN_1MS,
            payload_sizes=tuple(KiB * 4**k for k in range(11)),  # 1 KiB … 1 GiB
            payload_ref=64 * MiB,
            payload_point_s=0.3,
            payload_max_samples=200,
            gather_counts=(100, 1_000, 10_000, 100_000, 1_000_000),
            gather_ref=10_000,
            stream_items=10_000_000,
            stream_ref_items=1_000_000,
        )


class _Budget:
    """What is left of a curve's time, and whether a predicted point still fits."""

    def __init__(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self._deadline - time.monotonic()

    def allows(self, predicted_s: float) -> bool:
        return _PREDICTION_MARGIN * predicted_s < self.left()


# -- memory -----------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/self/status")


def _malloc_trim() -> None:
    """Return free heap memory to the kernel (glibc's `malloc_trim`; elsewhere nothing)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakRss:
    """This process's peak resident set over a `with` block, and its growth over the start.

    The kernel's high-water mark is reset at the start (/proc/self/clear_refs, Linux ≥ 4.0),
    so the peak covers this block only; if that is refused, a thread samples VmRSS every
    few milliseconds (which can miss a short spike).
    """

    _SAMPLE_S = 0.005

    def __init__(self) -> None:
        self.start_bytes = 0
        self.peak_bytes = 0
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled = 0

    @property
    def growth_bytes(self) -> int:
        """Peak minus the resident set at the start of the block (never negative)."""
        return max(0, self.peak_bytes - self.start_bytes)

    def __enter__(self) -> PeakRss:
        # Memory freed earlier but still resident would be reused inside the window and hide
        # growth: collect it and hand what malloc keeps back to the kernel first.
        gc.collect()
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:  # not allowed here (or an old kernel): sample instead
            self._sampler = threading.Thread(target=self._sample, daemon=True)
        self.start_bytes = 1024 * _status_kib("VmRSS")
        if self._sampler is not None:
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self._SAMPLE_S):
            self._sampled = max(self._sampled, _status_kib("VmRSS"))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sampler is None:
            self.peak_bytes = 1024 * _status_kib("VmHWM")
            return
        self._stop.set()
        self._sampler.join()
        self.peak_bytes = 1024 * max(self._sampled, _status_kib("VmRSS"))


# -- helpers ----------------------------------------------------------------------------------


def _check(got: Any, expected: Any, what: str) -> None:
    if got != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {got!r}")


def _opener(impl: Impl) -> Callable[..., Any]:
    assert impl.open_pool is not None
    return impl.open_pool


async def _warm(pool: PoolOps, workers: int) -> None:
    """Start every worker and run something on each (lazy pools start on demand)."""
    for _ in range(2):
        n = 2 * workers
        got = await asyncio.gather(*(pool.apply(_tasks.double, x) for x in range(n)))
        _check(list(got), [2 * x for x in range(n)], "warm-up")


def _timed(fn: Callable[[int], Any], arg: int) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def _at(points: list[dict[str, Any]], x: str, where: int) -> dict[str, Any]:
    """The point at `x == where`, else the last one below it (the curve stopped early)."""
    below = [p for p in points if p[x] <= where]
    return below[-1] if below else points[0]


# -- throughput vs workers --------------------------------------------------------------------


async def workers_curve(impl: Impl, sizes: Sizes) -> Result:
    """Fixed CPU-bound tasks gathered on pools of 1 … 2 x cores workers.

    Each point is the best of a few runs (tasks/s); the speed-up is over the same tasks run
    back to back in this process (as the `scaling` figure does), and over one worker.
    """
    plan = Plan.of(sizes)
    budget = _Budget(plan.budget_s)
    n = plan.worker_burn
    expected = _tasks.burn(n)
    one_task = min(_timed(_tasks.burn, n) for _ in range(20))
    k = plan.worker_tasks
    points: list[dict[str, Any]] = []
    beyond: int | None = None
    for workers in plan.worker_counts:
        if points:
            last = points[-1]
            predicted = plan.worker_runs * k / last["tasks_per_s"] + last["setup_s"]
            if not budget.allows(predicted):
                beyond = last["workers"]
                break
        t_setup = time.perf_counter()
        runs: list[float] = []
        async with _opener(impl)(workers, None) as pool:
            await _warm(pool, workers)
            setup_s = time.perf_counter() - t_setup
            for _ in range(plan.worker_runs):
                t0 = time.perf_counter()
                got = await asyncio.gather(*(pool.apply(_tasks.burn, n) for _ in range(k)))
                runs.append(time.perf_counter() - t0)
                _check(list(got), [expected] * k, "results")
        rate = k / min(runs)
        points.append(
            {
                "workers": workers,
                "tasks_per_s": rate,
                "speedup": rate * one_task,
                "runs_s": runs,
                "setup_s": setup_s,
            }
        )
    for point in points:
        point["speedup_vs_1_worker"] = point["tasks_per_s"] / points[0]["tasks_per_s"]
    cores = _cores()
    detail: dict[str, Any] = {
        "x": "workers",
        "points": points,
        "cores": cores,
        "tasks": k,
        "burn": n,
        "task_ms": 1e3 * one_task,
        "sequential_tasks_per_s": 1 / one_task,
        "not_measured_beyond": beyond,
    }
    return _at(points, "workers", cores)["speedup"], detail


# -- latency vs payload size ------------------------------------------------------------------


def _memcpy_s(data: bytes) -> float:
    """Best time of one copy of `data` into a buffer already in memory (the floor)."""
    target = bytearray(len(data))  # touched once below, so no page faults are timed
    view = memoryview(target)
    view[:] = data
    # Enough copies per timing to rise well above the clock's resolution.
    reps = max(1, min(10_000, (4 * MiB) // max(1, len(data))))
    best = float("inf")
    for _ in range(3 if len(data) >= 256 * MiB else 7):
        t0 = time.perf_counter()
        for _ in range(reps):
            view[:] = data
        best = min(best, (time.perf_counter() - t0) / reps)
    view.release()
    return best


async def payload_curve(impl: Impl, sizes: Sizes) -> Result:
    """One round trip of a `bytes` argument echoed back, per size (µs and GB/s).

    GB/s counts the bytes that crossed, out and back (2 x size per round trip), decimal.
    The floor is one memcpy of the same size in this process, measured beside each size:
    a round trip that copied each way once at memcpy speed would reach that floor's GB/s.
    """
    plan = Plan.of(sizes)
    budget = _Budget(plan.budget_s)
    points: list[dict[str, Any]] = []
    beyond: int | None = None
    async with _opener(impl)(sizes.workers, None) as pool:
        await _warm(pool, sizes.workers)
        for size in plan.payload_sizes:
            if points:
                last = points[-1]
                # A warm-up and at least three samples, each ~4x the last size's.
                predicted = 4 * 4 * last["round_trip_us"] / 1e6 + 2 * last["memcpy_us"] / 1e6
                if not budget.allows(predicted):
                    beyond = last["bytes"]
                    break
            data = b"\x01" * size  # every page written: no shared zero pages flatter the copy
            memcpy = _memcpy_s(data)
            got = await pool.apply(_curve_tasks.echo, data)  # warm-up at this size
            if len(got) != size or got != data:
                raise AssertionError(f"echo of {size} bytes came back different")
            del got
            times: list[float] = []
            while len(times) < 3 or (
                sum(times) < plan.payload_point_s and len(times) < plan.payload_max_samples
            ):
                t0 = time.perf_counter()
                got = await pool.apply(_curve_tasks.echo, data)
                times.append(time.perf_counter() - t0)
                _check(len(got), size, "echoed length")
                del got
            del data
            median = statistics.median(times)
            points.append(
                {
                    "bytes": size,
                    "round_trip_us": 1e6 * median,
                    "min_us": 1e6 * min(times),
                    "gb_per_s": 2 * size / median / 1e9,
                    "memcpy_us": 1e6 * memcpy,
                    "memcpy_gb_per_s": size / memcpy / 1e9,
                    "share_of_memcpy": (2 * size / median) / (size / memcpy),
                    "samples": len(times),
                }
            )
    detail: dict[str, Any] = {
        "x": "bytes",
        "points": points,
        "value_at_bytes": plan.payload_ref,
        "not_measured_beyond": beyond,
    }
    return _at(points, "bytes", plan.payload_ref)["gb_per_s"], detail


# -- throughput vs gathered tasks -------------------------------------------------------------


async def _gather_floor(n: int) -> float:
    """Tasks/s of the event loop gathering `n` coroutines that each await a future resolved
    at once: the loop's own cost per gathered task, with no library behind it."""
    loop = asyncio.get_running_loop()

    async def one(x: int) -> int:
        future: asyncio.Future[int] = loop.create_future()
        loop.call_soon(future.set_result, x)
        return 2 * await future

    t0 = time.perf_counter()
    await asyncio.gather(*(one(x) for x in range(n)))
    return n / (time.perf_counter() - t0)


async def gather_curve(impl: Impl, sizes: Sizes) -> Result:
    """`n` tiny `apply`s gathered at once, for growing `n` (tasks/s, RSS per pending task).

    The RSS growth is the parent's peak over the gather minus its RSS before the calls were
    made: the pending calls, their futures and coroutines, and the results list.
    """
    plan = Plan.of(sizes)
    budget = _Budget(plan.budget_s)
    points: list[dict[str, Any]] = []
    beyond: int | None = None
    async with _opener(impl)(sizes.workers, None) as pool:
        await _warm(pool, sizes.workers)
        await _gather_floor(100)  # warm the loop's own path too
        for n in plan.gather_counts:
            if points:
                last = points[-1]
                predicted = n / last["tasks_per_s"] + n / last["loop_floor_tasks_per_s"]
                if not budget.allows(predicted):
                    beyond = last["tasks"]
                    break
            try:
                with PeakRss() as rss:
                    t0 = time.perf_counter()
                    async with asyncio.timeout(budget.left()):
                        got = await asyncio.gather(
                            *(pool.apply(_tasks.double, x) for x in range(n))
                        )
                    seconds = time.perf_counter() - t0
            except TimeoutError:  # the prediction was wrong: keep what was measured
                beyond = points[-1]["tasks"] if points else 0
                break
            if got != list(range(0, 2 * n, 2)):
                raise AssertionError(f"results of {n} gathered calls differ from the expected")
            del got
            # After the measured gather, not before: memory the floor's gather freed would
            # otherwise be reused by the calls and hide their RSS.
            floor = await _gather_floor(n)
            points.append(
                {
                    "tasks": n,
                    "tasks_per_s": n / seconds,
                    "seconds": seconds,
                    "loop_floor_tasks_per_s": floor,
                    "rss_growth_bytes": rss.growth_bytes,
                    "rss_per_task_bytes": rss.growth_bytes / n,
                    "rss_peak_bytes": rss.peak_bytes,
                }
            )
    detail: dict[str, Any] = {
        "x": "tasks",
        "points": points,
        "value_at_tasks": plan.gather_ref,
        "not_measured_beyond": beyond,
    }
    return _at(points, "tasks", plan.gather_ref)["tasks_per_s"], detail


# -- map over millions of items in bounded memory ---------------------------------------------

Drain = Callable[[int], Awaitable[int]]
"""`drain(n)`: stream `double` over a lazy input of `n` ints; the sum of the results."""


def _lazy(n: int) -> Any:
    """The input: a generator, so no implementation can know its length or slice it."""
    return (x for x in range(n))


@contextlib.asynccontextmanager
async def _stream_aioproc(workers: int) -> AsyncIterator[tuple[Drain, str]]:
    import aioproc

    async with aioproc.ProcessPool(max_workers=workers) as pool:

        async def drain(n: int) -> int:
            total = 0
            async for y in pool.imap(_tasks.double, _lazy(n)):
                total += y
            return total

        yield drain, "pool.imap, default (adaptive) chunks"


@contextlib.asynccontextmanager
async def _stream_mp_pool(workers: int) -> AsyncIterator[tuple[Drain, str]]:
    loop = asyncio.get_running_loop()
    pool = multiprocessing.get_context().Pool(processes=workers)

    def consume(n: int) -> int:
        return sum(pool.imap(_tasks.double, _lazy(n), chunksize=_STREAM_CHUNKSIZE))

    def drain(n: int) -> Awaitable[int]:
        # Pool.imap's iterator blocks: consumed in the loop's default thread pool.
        return loop.run_in_executor(None, consume, n)

    try:
        yield drain, f"Pool.imap(chunksize={_STREAM_CHUNKSIZE}) in a thread"
    finally:
        pool.terminate()
        pool.join()


@contextlib.asynccontextmanager
async def _stream_ppe(workers: int) -> AsyncIterator[tuple[Drain, str]]:
    from concurrent.futures import ProcessPoolExecutor

    loop = asyncio.get_running_loop()
    executor = ProcessPoolExecutor(max_workers=workers)

    def consume(n: int) -> int:
        return sum(executor.map(_tasks.double, _lazy(n), chunksize=_STREAM_CHUNKSIZE))

    def drain(n: int) -> Awaitable[int]:
        # Executor.map's iterator blocks: consumed in the loop's default thread pool.
        return loop.run_in_executor(None, consume, n)

    try:
        yield drain, f"Executor.map(chunksize={_STREAM_CHUNKSIZE}) in a thread"
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


_STREAMERS: dict[str, Callable[[int], contextlib.AbstractAsyncContextManager[tuple[Drain, str]]]]
_STREAMERS = {"aioproc": _stream_aioproc, "mp_pool": _stream_mp_pool, "ppe": _stream_ppe}
"""The implementations with a map that streams results from a lazy input; anyio has no map
and aiomultiprocess's submits every item as its own task before the first result."""


async def stream_curve(impl: Impl, sizes: Sizes) -> Result:
    """A streaming map of the tiny task over a generator of `stream_items` ints (items/s),
    the parent's peak RSS compared with a run over a tenth as many items.

    Bounded memory shows as the same peak growth for both runs; a map that reads its whole
    input ahead grows with the item count.
    """
    plan = Plan.of(sizes)
    budget = _Budget(plan.budget_s)
    points: list[dict[str, Any]] = []
    beyond: int | None = None
    async with _STREAMERS[impl.name](sizes.workers) as (drain, how):
        _check(await drain(1_000), 1_000 * 999, "warm-up sum")
        for n in (plan.stream_ref_items, plan.stream_items):
            if points and not budget.allows(n / points[-1]["items_per_s"]):
                beyond = points[-1]["items"]
                break
            with PeakRss() as rss:
                t0 = time.perf_counter()
                total = await drain(n)
                seconds = time.perf_counter() - t0
            _check(total, n * (n - 1), "sum of the results")
            points.append(
                {
                    "items": n,
                    "items_per_s": n / seconds,
                    "seconds": seconds,
                    "rss_growth_bytes": rss.growth_bytes,
                    "rss_peak_bytes": rss.peak_bytes,
                }
            )
    detail: dict[str, Any] = {
        "x": "items",
        "points": points,
        "how": how,
        "not_measured_beyond": beyond,
    }
    if len(points) == 2:
        small, large = points
        detail["rss_growth_ratio"] = large["rss_growth_bytes"] / max(1, small["rss_growth_bytes"])
    return points[-1]["items_per_s"], detail


# -- the figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """What `_figures` needs to register one curve as a figure."""

    name: str
    unit: str
    better: Literal["lower", "higher"]
    about: str
    measures: dict[str, Measure]


def _pools(fn: Callable[[Impl, Sizes], Awaitable[Result]], names: Any = None) -> dict[str, Measure]:
    return {
        impl.name: functools.partial(fn, impl)
        for impl in IMPLS.values()
        if impl.open_pool is not None and (names is None or impl.name in names)
    }


CURVES: tuple[Curve, ...] = (
    Curve(
        name="curves.workers",
        unit="x",
        better="higher",
        about="~1 ms pure-Python tasks gathered on 1 … 2 x cores workers; value: speed-up over"
        " one process at workers = cores",
        measures=_pools(workers_curve),
    ),
    Curve(
        name="curves.payload",
        unit="GB/s",
        better="higher",
        about="one round trip of a `bytes` echoed by a worker, 1 KiB … 1 GiB (64 MiB quick);"
        " value: GB/s both ways at 64 MiB",
        measures=_pools(payload_curve),
    ),
    Curve(
        name="curves.gather",
        unit="tasks/s",
        better="higher",
        about="100 … 1,000,000 (10,000 quick) tiny `apply`s gathered at once, with the"
        " parent's RSS per pending task; value: at 10,000",
        measures=_pools(gather_curve),
    ),
    Curve(
        name="curves.stream",
        unit="items/s",
        better="higher",
        about="a streaming map over a generator of 10,000,000 (200,000 quick) tiny items,"
        " peak RSS vs a tenth as many; value: at the largest count measured",
        measures=_pools(stream_curve, _STREAMERS),
    ),
)
"""Every curve, in table order."""


def notes(reports: dict[str, dict[str, Any]], figures: list[str]) -> list[str]:
    """One line per curve and implementation for the notes under the table."""
    lines: list[str] = []
    for curve in CURVES:
        if curve.name not in figures:
            continue
        for impl, report in reports.items():
            result = report.get("figures", {}).get(curve.name, {})
            if result.get("status") != "ok":
                continue
            detail = result["detail"]
            parts = [_describe(curve.name, p) for p in detail["points"]]
            if detail.get("not_measured_beyond") is not None:
                parts.append(f"not measured beyond {detail['not_measured_beyond']:,}")
            lines.append(f"{curve.name} {impl}: " + "; ".join(parts))
    return lines


def _describe(name: str, p: dict[str, Any]) -> str:
    if name == "curves.workers":
        return f"{p['workers']}w {p['tasks_per_s']:.0f}/s {p['speedup']:.2f}x"
    if name == "curves.payload":
        size = p["bytes"]
        label = f"{size // GiB}G" if size >= GiB else f"{size // MiB}M" if size >= MiB else None
        label = label or f"{size // KiB}K"
        return f"{label} {p['round_trip_us']:.0f}µs {p['gb_per_s']:.2f}GB/s"
    if name == "curves.gather":
        return (
            f"{p['tasks']:,} {p['tasks_per_s'] / 1e3:.1f}k/s"
            f" {p['rss_per_task_bytes'] / 1e3:.1f}kB/task"
        )
    return (
        f"{p['items']:,} {p['items_per_s'] / 1e6:.2f}M/s peak +{p['rss_growth_bytes'] / MiB:.1f}MiB"
    )
