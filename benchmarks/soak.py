"""The soak: one pool serves many tasks with faults mixed in; every task must be accounted for.

Usage (from the project root)::

    python -m benchmarks.soak [--tasks N] [--workers W] [--seed S] [--start-method M]
                              [--backend asyncio|uvloop|trio] [--task-timeout T]
                              [--clients C] [--deadline S] [--json PATH]

A seeded plan gives every task index one *kind*: a cheap success delivered through
``pool.map``, ``pool.imap_unordered``, ``pool.submit`` or ``pool.apply``, or a fault: the task
raises (``ValueError``, ``KeyError``, or a class of its own), its worker calls ``os._exit(n)``
or gets SIGKILL, it runs past the pool's ``task_timeout``, or its caller cancels it (with
``Task.cancel()`` or a cancel scope around ``apply``, once the task is known to run; or with
``Task.cancel()`` at once, while the task still waits in the pool's queue).

The tasks run in slices of ``_SLICE`` indexes, ``--clients`` slices at a time, as the
requests of a server would. Every outcome is checked against the plan the moment it
arrives: a success must carry the right value, an exception the planned type and message,
a dead worker the planned exit code or signal. The summary lists, per outcome, how many
were planned and how many came back, plus the pool's own counters against what the plan
implies, the parent's resident memory after a warm-up and at the end, and the processes
alive before and after the pool closes. The exit status is 1 if anything does not add up.

``tests/test_soak.py`` runs the same soak (100,000 tasks) as a slow test.

What it costs: successes cost microseconds; a dead or killed worker costs a respawn
(milliseconds with the fork server, a fresh interpreter with spawn); a timeout holds one
worker for ``task_timeout``. The plan therefore has about 300 of those per 100,000 tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from tests import procs, soak_tasks

import aioproc
from aioproc._core import _spawn

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# --- the plan -----------------------------------------------------------------------------

# Kinds of task. The first four succeed; the rest are the faults.
OK_MAP, OK_IMAP, OK_SUBMIT, OK_APPLY = 0, 1, 2, 3
RAISE, EXIT, KILL, TIMEOUT, CANCEL_TASK, CANCEL_SCOPE, CANCEL_QUEUED = 4, 5, 6, 7, 8, 9, 10
KIND_NAMES = (
    "ok via map",
    "ok via imap_unordered",
    "ok via submit",
    "ok via apply",
    "raise",
    "os._exit(n)",
    "SIGKILL",
    "past task_timeout",
    "Task.cancel() while running",
    "cancel scope while running",
    "Task.cancel() while queued",
)

# Outcomes, as the caller sees them. 0 in the ledger means "no outcome yet".
OK, RAISED, EXITED, KILLED, TIMED_OUT, CANCELLED, OTHER = 1, 2, 3, 4, 5, 6, 7
OUTCOME_NAMES = {
    OK: "ok (right value)",
    RAISED: "raised (its own exception)",
    EXITED: "WorkerDiedError (exit code)",
    KILLED: "WorkerDiedError (SIGKILL)",
    TIMED_OUT: "TimeoutError",
    CANCELLED: "cancelled",
    OTHER: "anything else",
}
EXPECTED = {
    OK_MAP: OK,
    OK_IMAP: OK,
    OK_SUBMIT: OK,
    OK_APPLY: OK,
    RAISE: RAISED,
    EXIT: EXITED,
    KILL: KILLED,
    TIMEOUT: TIMED_OUT,
    CANCEL_TASK: CANCELLED,
    CANCEL_SCOPE: CANCELLED,
    CANCEL_QUEUED: CANCELLED,
}

# How many faults of each kind per 100,000 tasks. The cheap ones (an exception, a queued task
# cancelled) scale with the run; those that cost a worker (a respawn each, and a timeout
# holds its worker for task_timeout) total about 300 at the full size.
_FAULTS_PER_100K = {
    RAISE: 1500,
    CANCEL_QUEUED: 300,
    EXIT: 80,
    KILL: 80,
    TIMEOUT: 24,
    CANCEL_TASK: 60,
    CANCEL_SCOPE: 60,
}
# How the remaining (successful) tasks are delivered.
_DELIVERY = ((OK_MAP, 0.50), (OK_IMAP, 0.35), (OK_SUBMIT, 0.12), (OK_APPLY, 0.03))
_CHUNKSIZES = (1, 4, 16, 64)
_SLICE = 1000
_WARMUP = 0.10  # share of the slices run before the first memory reading
_POLL_S = 0.002  # how often a client looks for the file a cancellation target creates
_SETTLE_S = 10.0  # hard limit on waiting for killed workers to be reaped at the end

MIN_TASKS = 2 * len(KIND_NAMES)

# Flat memory. Both readings come after a collection and malloc_trim, so they show memory in
# use. From the warm-up (10% of the tasks: every kind of task and fault has run, caches and
# free lists are full) to the end, allocator fragmentation adds 0.3-2 MiB, early on: over
# 300,000 tasks the readings after each quarter stay the same. At 100,000 tasks, 4 MiB still
# catches a leak of one object of 48 bytes or more per task over the 90,000 after the
# warm-up (an int alone is 28 bytes, a Job with its payload about 200).
RSS_GROWTH_LIMIT_KIB = 4 * 1024
# Leaks per fault (a few hundred of them) are too small for RSS to show, but not for the
# count of gc-tracked objects, which moves by a handful from the warm-up to the end.
OBJECT_GROWTH_LIMIT = 200


class Plan:
    """What each task index does; a pure function of ``(tasks, seed)``.

    The first slice holds at least one task of every kind, so that every code path has run
    before the warm-up memory reading.
    """

    def __init__(self, tasks: int, seed: int) -> None:
        if tasks < MIN_TASKS:
            raise ValueError(f"tasks must be at least {MIN_TASKS}; got {tasks}")
        rng = random.Random(seed)
        kinds = [kind for kind, _ in _DELIVERY]
        weights = [weight for _, weight in _DELIVERY]
        self.kinds = bytearray(rng.choices(kinds, weights, k=tasks))
        first = min(_SLICE, tasks)
        forced = rng.sample(range(first), len(_FAULTS_PER_100K))
        for index, kind in zip(forced, _FAULTS_PER_100K, strict=True):
            self.kinds[index] = kind
        free = sorted(set(range(tasks)) - set(forced))
        for kind, per_100k in _FAULTS_PER_100K.items():
            extra = max(0, round(per_100k * tasks / 100_000) - 1)
            extra = min(extra, len(free) // 4)  # small runs stay mostly successes
            for index in rng.sample(free, extra):
                self.kinds[index] = kind
            free = [i for i in free if self.kinds[i] not in _FAULTS_PER_100K]
        self.tasks = tasks
        self.seed = seed
        slices = math.ceil(tasks / _SLICE)
        self.slices = slices
        self.chunksizes = [
            (rng.choice(_CHUNKSIZES), rng.choice(_CHUNKSIZES)) for _ in range(slices)
        ]

    def bounds(self, number: int) -> range:
        return range(number * _SLICE, min((number + 1) * _SLICE, self.tasks))

    # Per-task parameters follow from the index: which exception, which exit code.

    @staticmethod
    def raise_kind(index: int) -> str:
        return ("value", "key", "soak")[index % 3]

    @staticmethod
    def exit_code(index: int) -> int:
        return 1 + index % 100

    def count(self, kind: int) -> int:
        return self.kinds.count(kind)

    def expected_outcomes(self) -> dict[int, int]:
        counts = dict.fromkeys(OUTCOME_NAMES, 0)
        for kind in range(len(KIND_NAMES)):
            counts[EXPECTED[kind]] += self.count(kind)
        return counts


# --- the ledger ---------------------------------------------------------------------------


class Ledger:
    """One outcome per task, checked against the plan as it arrives."""

    _EXAMPLES = 12

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.got = bytearray(plan.tasks)  # allocated up front: it must not show as growth
        self.counts = dict.fromkeys(OUTCOME_NAMES, 0)
        self.wrong = 0
        self.duplicates = 0
        self.examples: list[str] = []

    def _note(self, text: str) -> None:
        if len(self.examples) < self._EXAMPLES:
            self.examples.append(text)

    def record(self, index: int, outcome: int, right: bool, what: object) -> None:
        if self.got[index]:
            self.duplicates += 1
            self._note(f"task {index}: a second outcome {what!r}")
            return
        self.got[index] = outcome
        self.counts[outcome] += 1
        kind = self.plan.kinds[index]
        if outcome != EXPECTED[kind] or not right:
            self.wrong += 1
            self._note(f"task {index} ({KIND_NAMES[kind]}): got {what!r}")

    def value(self, index: int, result: object) -> None:
        self.record(index, OK, result == soak_tasks.value(index), result)

    def cancelled(self, index: int) -> None:
        self.record(index, CANCELLED, True, "cancelled")

    def error(self, index: int, exc: BaseException) -> None:
        plan = self.plan
        if isinstance(exc, aioproc.WorkerDiedError):
            if exc.exitcode is not None and exc.exitcode < 0:
                right = exc.exitcode == -9 and "SIGKILL" in str(exc)
                self.record(index, KILLED, right, exc)
            else:
                code = plan.exit_code(index)
                right = exc.exitcode == code and f"exited with code {code}" in str(exc)
                self.record(index, EXITED, right, exc)
        elif isinstance(exc, TimeoutError):
            self.record(index, TIMED_OUT, type(exc) is TimeoutError, exc)
        elif isinstance(exc, ValueError | KeyError | soak_tasks.SoakError):
            kind = plan.raise_kind(index)
            if kind == "value":
                right = type(exc) is ValueError and str(exc) == f"soak task {index} raised"
            elif kind == "key":
                right = type(exc) is KeyError and exc.args == (index,)
            else:
                right = type(exc) is soak_tasks.SoakError and exc.index == index
            # The worker's traceback rides along as the cause.
            right = right and isinstance(exc.__cause__, aioproc.RemoteTraceback)
            self.record(index, RAISED, right, exc)
        else:
            self.record(index, OTHER, False, exc)

    def missing(self) -> int:
        return self.got.count(0)


# --- the run ------------------------------------------------------------------------------


async def _poll(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (a file a worker creates has nothing to wait on)."""
    while not condition():  # noqa: ASYNC110
        await anyio.sleep(_POLL_S)


class _Soak:
    def __init__(self, pool: aioproc.ProcessPool, plan: Plan, flags: Path) -> None:
        self.pool = pool
        self.plan = plan
        self.ledger = Ledger(plan)
        self.flags = flags
        self.unsure = 0  # "queued" cancellations that found the task already sent
        self.rss_peak = 0

    async def slices(self, numbers: Sequence[int], clients: int) -> None:
        todo = iter(numbers)

        async def client() -> None:
            for number in todo:
                await self.slice(number)
                self.rss_peak = max(self.rss_peak, rss_kib())

        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client)

    async def slice(self, number: int) -> None:
        pool, plan, ledger = self.pool, self.plan, self.ledger
        kinds = plan.kinds
        bounds = plan.bounds(number)
        mapped = [i for i in bounds if kinds[i] == OK_MAP]
        imapped = [i for i in bounds if kinds[i] == OK_IMAP]
        map_size, imap_size = plan.chunksizes[number]
        waiting: list[tuple[int, aioproc.Task[Any]]] = []
        queued: list[int] = []
        async with anyio.create_task_group() as tg:
            if mapped:
                tg.start_soon(self.map, mapped, map_size)
            if imapped:
                tg.start_soon(self.imap, imapped, imap_size)
            # Everything below is submitted in this one loop turn, as a burst.
            for i in bounds:
                kind = kinds[i]
                if kind in (OK_MAP, OK_IMAP):
                    continue
                if kind == OK_APPLY:
                    tg.start_soon(self.apply, i)
                elif kind == CANCEL_SCOPE:
                    tg.start_soon(self.cancel_scope, i, tg)
                elif kind == CANCEL_QUEUED:
                    queued.append(i)
                elif kind == CANCEL_TASK:
                    hung = pool.submit(soak_tasks.announce_and_hang, str(self.flags / str(i)))
                    tg.start_soon(self.cancel_task, i, hung)
                else:
                    waiting.append((i, self.submit(i, kind)))
            for i in queued:
                task = pool.submit(soak_tasks.work, i)
                # Submitted after others in the same loop turn, it normally still waits in
                # the pool's queue: cancelling it then kills no worker. If the queue is
                # empty it went out already, and the restart count may differ by one.
                if not pool.statistics().queued:
                    self.unsure += 1
                task.cancel()
                if task.cancelled():
                    ledger.cancelled(i)
                else:
                    self.settled(i, task)
            for i, pending in waiting:
                try:
                    result = await pending
                except Exception as exc:
                    ledger.error(i, exc)
                else:
                    ledger.value(i, result)

    def submit(self, index: int, kind: int) -> aioproc.Task[Any]:
        fn: Callable[..., Any]
        args: tuple[Any, ...]
        if kind == OK_SUBMIT:
            fn, args = soak_tasks.work, (index,)
        elif kind == RAISE:
            fn, args = soak_tasks.fail, (index, self.plan.raise_kind(index))
        elif kind == EXIT:
            fn, args = soak_tasks.exit_with, (self.plan.exit_code(index),)
        elif kind == KILL:
            fn, args = soak_tasks.kill_self, ()
        else:
            assert kind == TIMEOUT, kind
            fn, args = soak_tasks.hang, ()
        return self.pool.submit(fn, *args)

    def settled(self, index: int, task: aioproc.Task[Any]) -> None:
        """Record the outcome of a task that is done."""
        if task.cancelled():
            self.ledger.cancelled(index)
        elif (exc := task.exception()) is not None:
            self.ledger.error(index, exc)
        else:
            self.ledger.value(index, task.result())

    async def map(self, items: list[int], chunksize: int) -> None:
        try:
            results = await self.pool.map(soak_tasks.work, items, chunksize=chunksize)
        except Exception as exc:
            for i in items:
                self.ledger.error(i, exc)
            return
        for i, result in zip(items, results, strict=True):
            self.ledger.value(i, result)

    async def imap(self, items: list[int], chunksize: int) -> None:
        left = set(items)
        try:
            async with self.pool.imap_unordered(
                soak_tasks.work_pair, items, chunksize=chunksize
            ) as results:
                async for i, result in results:
                    left.discard(i)
                    self.ledger.value(i, result)
        except Exception as exc:
            for i in sorted(left):
                self.ledger.error(i, exc)

    async def apply(self, index: int) -> None:
        try:
            result = await self.pool.apply(soak_tasks.work, index)
        except Exception as exc:
            self.ledger.error(index, exc)
        else:
            self.ledger.value(index, result)

    async def cancel_task(self, index: int, task: aioproc.Task[Any]) -> None:
        """``Task.cancel()`` once the task runs (it creates its flag file first thing)."""
        flag = self.flags / str(index)
        await _poll(lambda: task.done() or flag.exists())
        task.cancel()
        self.settled(index, task)

    async def cancel_scope(self, index: int, tg: anyio.abc.TaskGroup) -> None:
        """A cancel scope around ``await pool.apply(...)``, cancelled once the task runs."""
        flag = self.flags / str(index)
        ended = False

        async def canceller(scope: anyio.CancelScope) -> None:
            await _poll(lambda: ended or flag.exists())
            scope.cancel()

        recorded = False
        with anyio.CancelScope() as scope:
            tg.start_soon(canceller, scope)
            try:
                await self.pool.apply(soak_tasks.announce_and_hang, str(flag))
            except Exception as exc:
                recorded = True
                self.ledger.error(index, exc)
            else:
                recorded = True
                self.ledger.value(index, None)
            finally:
                ended = True
        if scope.cancelled_caught and not recorded:
            self.ledger.cancelled(index)


def rss_kib() -> int:
    """This process's resident set size, in KiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _workers_and_strays(pids: Sequence[int]) -> tuple[int, list[int]]:
    """Live descendants (but the fork server) that are the pool's workers, and the others."""
    found = procs.descendants()
    server = _spawn._forkserver
    if server is not None:
        found.discard(server.pid)
    return len(found & set(pids)), sorted(found - set(pids))


def _settled() -> tuple[int, int]:
    """RSS (KiB) and gc-tracked objects, once garbage is collected and freed memory returned.

    ``malloc_trim`` hands glibc's free heap back to the system, so that the RSS shows what
    is in use rather than the allocator's high-water mark of the busiest moment.
    """
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    return rss_kib(), len(gc.get_objects())


@dataclass
class Report:
    """What one soak run found; ``problems()`` lists what does not add up."""

    tasks: int
    workers: int
    seed: int
    backend: str
    start_method: str
    task_timeout: float
    clients: int
    planned: dict[str, int]  # kind -> tasks
    expected: dict[str, int]  # outcome -> tasks
    got: dict[str, int]
    missing: int
    duplicates: int
    wrong: int
    examples: list[str]
    completed: int
    failed: int
    restarts: int
    expected_completed: int
    expected_failed: int
    expected_restarts: int
    unsure_restarts: int  # queued cancellations that may have cost a worker after all
    workers_before_close: int
    strays_before_close: list[int]
    descendants_after_close: list[int]
    busy: int
    queued: int
    warmup_tasks: int
    rss_warm_kib: int
    rss_end_kib: int
    rss_peak_kib: int
    rss_trail_kib: list[int]  # after each quarter of the slices after the warm-up
    objects_warm: int
    objects_end: int
    elapsed_s: float
    stalled: bool  # stopped by the deadline

    @property
    def rss_growth_kib(self) -> int:
        return self.rss_end_kib - self.rss_warm_kib

    def problems(self) -> list[str]:
        found = []
        if self.stalled:
            found.append(f"stopped by the deadline after {self.elapsed_s:.0f} s")
        if self.missing or self.duplicates or self.wrong:
            found.append(
                f"{self.missing} tasks without an outcome, {self.duplicates} with two,"
                f" {self.wrong} with a wrong one: {self.examples}"
            )
        if self.got != self.expected:
            found.append(f"outcomes {self.got} != planned {self.expected}")
        if self.completed != self.expected_completed or self.failed != self.expected_failed:
            found.append(
                f"statistics: completed {self.completed}, failed {self.failed};"
                f" the plan implies {self.expected_completed}, {self.expected_failed}"
            )
        low, high = self.expected_restarts, self.expected_restarts + self.unsure_restarts
        if not low <= self.restarts <= high:
            found.append(f"statistics: {self.restarts} restarts; the plan implies {low}..{high}")
        if self.busy or self.queued:
            found.append(f"statistics: {self.busy} busy workers, {self.queued} queued tasks")
        if self.workers_before_close != self.workers or self.strays_before_close:
            found.append(
                f"before close: {self.workers_before_close} of {self.workers} workers alive,"
                f" other processes {self.strays_before_close}"
            )
        if self.descendants_after_close:
            found.append(f"processes left after close: {self.descendants_after_close}")
        if not self.stalled and self.rss_growth_kib >= RSS_GROWTH_LIMIT_KIB:
            found.append(f"RSS grew by {self.rss_growth_kib} KiB after the warm-up")
        if not self.stalled and self.objects_end - self.objects_warm >= OBJECT_GROWTH_LIMIT:
            found.append(f"{self.objects_end - self.objects_warm} more gc-tracked objects")
        return found

    def summary(self) -> str:
        lines = [
            f"soak: {self.tasks:,} tasks, {self.workers} workers, {self.clients} clients,"
            f" seed {self.seed}, {self.backend}, {self.start_method},"
            f" task_timeout {self.task_timeout:g} s",
            "planned: " + ", ".join(f"{name} {n:,}" for name, n in self.planned.items()),
            f"  {'outcome':<30} {'expected':>9} {'got':>9}",
        ]
        for name, n in self.expected.items():
            lines.append(f"  {name:<30} {n:>9,} {self.got[name]:>9,}")
        restarts = f"{self.expected_restarts:,}"
        if self.unsure_restarts:
            restarts += f" to {self.expected_restarts + self.unsure_restarts:,}"
        lines += [
            f"  missing {self.missing}, duplicate {self.duplicates}, wrong {self.wrong}",
            f"pool statistics: completed {self.completed:,} (expected"
            f" {self.expected_completed:,}: calls + map/imap items), failed {self.failed:,}"
            f" (expected {self.expected_failed:,}), restarts {self.restarts:,} (expected"
            f" {restarts}), busy {self.busy}, queued {self.queued}",
            f"processes: {self.workers_before_close} workers alive before close"
            f" (other descendants: {len(self.strays_before_close)}),"
            f" {len(self.descendants_after_close)} descendants after close",
            f"parent RSS: {self.rss_warm_kib / 1024:.1f} MiB after warm-up"
            f" ({self.warmup_tasks:,} tasks), {self.rss_end_kib / 1024:.1f} MiB at the end"
            f" ({self.rss_growth_kib / 1024:+.2f} MiB); by quarter "
            + " ".join(f"{kib / 1024:.1f}" for kib in self.rss_trail_kib)
            + f"; peak before trimming {self.rss_peak_kib / 1024:.1f} MiB",
            f"gc-tracked objects: {self.objects_warm:,} after warm-up, {self.objects_end:,}"
            f" at the end ({self.objects_end - self.objects_warm:+,})",
            f"elapsed {self.elapsed_s:.1f} s, {self.tasks / self.elapsed_s:,.0f} tasks/s"
            + (" (STOPPED BY THE DEADLINE)" if self.stalled else ""),
        ]
        if self.examples:
            lines.append("first problems: " + "; ".join(self.examples))
        return "\n".join(lines)


async def run_soak(
    tasks: int = 100_000,
    *,
    workers: int = 4,
    seed: int = 1,
    start_method: str | None = None,
    task_timeout: float = 1.0,
    clients: int = 4,
    deadline: float | None = None,
) -> Report:
    """Run the soak in the current event loop (any anyio backend) and report.

    Args:
        tasks: how many tasks to submit.
        workers: the pool's ``max_workers``.
        seed: seed of the plan.
        start_method: the pool's start method (default: the platform's).
        task_timeout: the pool's ``task_timeout``. It must stay well above what a cheap task
            or a worker start can take on a loaded machine, and above the time a client
            needs to cancel a task it saw start (a few ms), or those would time out instead.
        clients: slices in flight at once.
        deadline: seconds after which the soak stops where it is (a stall) and reports.
    """
    plan = Plan(tasks, seed)
    backend_name = _backend_name()
    method = _spawn.resolve_start_method(start_method)
    warm = max(1, round(plan.slices * _WARMUP))
    with tempfile.TemporaryDirectory(prefix="aioproc-soak-") as flags:
        pool = aioproc.ProcessPool(workers, task_timeout=task_timeout, start_method=method)
        async with pool:
            soak = _Soak(pool, plan, Path(flags))
            rss_warm = objects_warm = rss_end = objects_end = 0
            trail: list[int] = []
            started = time.perf_counter()
            # A stall must end in a report (what is accounted for), not in a hung run.
            with anyio.move_on_after(deadline) as guard:
                await soak.slices(range(warm), clients)
                rss_warm, objects_warm = _settled()
                # The rest in quarters, with a reading after each: a leak grows step by
                # step, a high-water mark does not.
                rest = range(warm, plan.slices)
                for quarter in range(4):
                    part = rest[len(rest) * quarter // 4 : len(rest) * (quarter + 1) // 4]
                    await soak.slices(part, clients)
                    trail.append(_settled()[0])
            elapsed = time.perf_counter() - started
            rss_end, objects_end = _settled()
            # A worker killed last may not be reaped yet: wait for that, within limits.
            with anyio.move_on_after(_SETTLE_S):
                await _poll(lambda: _workers_and_strays(pool.statistics().pids) == (workers, []))
            stats = pool.statistics()
            alive, strays = _workers_and_strays(stats.pids)
        _, after = _workers_and_strays(())

    ledger = soak.ledger
    failing = (RAISE, EXIT, KILL, TIMEOUT)
    killing = (EXIT, KILL, TIMEOUT, CANCEL_TASK, CANCEL_SCOPE)
    return Report(
        tasks=tasks,
        workers=workers,
        seed=seed,
        backend=backend_name,
        start_method=method,
        task_timeout=task_timeout,
        clients=clients,
        planned={name: plan.count(kind) for kind, name in enumerate(KIND_NAMES)},
        expected={OUTCOME_NAMES[o]: n for o, n in plan.expected_outcomes().items()},
        got={OUTCOME_NAMES[o]: n for o, n in ledger.counts.items()},
        missing=ledger.missing(),
        duplicates=ledger.duplicates,
        wrong=ledger.wrong,
        examples=ledger.examples,
        completed=stats.completed,
        failed=stats.failed,
        restarts=stats.restarts,
        # Every successful task counts once, each map and imap item included.
        expected_completed=sum(plan.count(k) for k in (OK_MAP, OK_IMAP, OK_SUBMIT, OK_APPLY)),
        expected_failed=sum(plan.count(k) for k in failing),
        expected_restarts=sum(plan.count(k) for k in killing),
        unsure_restarts=soak.unsure,
        workers_before_close=alive,
        strays_before_close=strays,
        descendants_after_close=after,
        busy=stats.busy,
        queued=stats.queued,
        warmup_tasks=min(warm * _SLICE, tasks),
        rss_warm_kib=rss_warm,
        rss_end_kib=rss_end,
        rss_peak_kib=max(soak.rss_peak, rss_end),
        rss_trail_kib=trail,
        objects_warm=objects_warm,
        objects_end=objects_end,
        elapsed_s=elapsed,
        stalled=guard.cancelled_caught,
    )


def _backend_name() -> str:
    import sniffio

    name = sniffio.current_async_library()
    if name == "asyncio":
        loop = asyncio.get_running_loop()
        if type(loop).__module__.startswith("uvloop"):
            return "uvloop"
    return name


# --- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description="A pool serves many tasks with faults mixed in; check every outcome.",
    )
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks (default 100000)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the plan (default 1)")
    parser.add_argument(
        "--start-method", choices=_spawn.START_METHODS, help="default: the platform's"
    )
    parser.add_argument(
        "--backend", choices=("asyncio", "uvloop", "trio"), default="asyncio", help="event loop"
    )
    parser.add_argument(
        "--task-timeout", type=float, default=1.0, help="the pool's task_timeout (default 1 s)"
    )
    parser.add_argument("--clients", type=int, default=4, help="slices in flight (default 4)")
    parser.add_argument(
        "--deadline", type=float, default=600.0, help="stop and report after this (default 600 s)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.tasks < MIN_TASKS:
        print(f"error: --tasks must be at least {MIN_TASKS}", file=sys.stderr)
        return 2
    backend, options = args.backend, {}
    if backend == "uvloop":
        backend, options = "asyncio", {"use_uvloop": True}

    async def soak() -> Report:
        return await run_soak(
            args.tasks,
            workers=args.workers,
            seed=args.seed,
            start_method=args.start_method,
            task_timeout=args.task_timeout,
            clients=args.clients,
            deadline=args.deadline,
        )

    report = anyio.run(soak, backend=backend, backend_options=options)
    print(report.summary())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(report), f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    problems = report.problems()
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
