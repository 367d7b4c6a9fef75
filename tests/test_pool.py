"""ProcessPool: every item of API.md's "Pools" section, under asyncio, uvloop and trio."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioproc
from tests import map_tasks, tasks

pytestmark = pytest.mark.anyio


# --- apply and submit ---------------------------------------------------------------------


async def test_apply_sync_async_and_kwargs(start_method: str) -> None:
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:
        assert await pool.apply(tasks.double, 21) == 42
        assert await pool.apply(tasks.async_double, 4) == 8
        assert await pool.apply(tasks.add, 1, 2, scale=10) == 30
        pids = {await pool.apply(tasks.pid) for _ in range(4)}
        assert os.getpid() not in pids
        assert pids <= set(pool.statistics().pids)


async def test_values_keep_their_exact_type() -> None:
    values: list[Any] = [
        (1, 2),
        [1, 2],
        {1, 2},
        frozenset({3}),
        b"raw",
        bytearray(b"x"),
        {"a": (1,)},
        1.5,
        2**100,
        None,
        complex(1, 2),
        range(3),
    ]
    async with aioproc.ProcessPool(1) as pool:
        for value in values:
            name, back = await pool.apply(tasks.identity_type, value)
            assert name == type(value).__name__
            assert back == value and type(back) is type(value)


async def test_lambdas_closures_and_local_functions() -> None:
    offset = 100

    def local(x: int) -> int:
        return x + offset

    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(lambda x: x * 3, 3) == 9
        assert await pool.apply(local, 1) == 101
        assert await pool.map(local, [1, 2]) == [101, 102]
        # A lambda as an argument travels by value too.
        assert await pool.apply(tasks.return_lambda_result, lambda v: v - 1, 10) == 9


async def test_exception_keeps_type_and_remote_traceback(start_method: str) -> None:
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:
        with pytest.raises(ValueError, match="boom") as info:
            await pool.apply(tasks.fail)
        cause = info.value.__cause__
        assert isinstance(cause, aioproc.RemoteTraceback)
        assert "in fail" in str(cause) and "ValueError: boom" in str(cause)
        assert await pool.apply(tasks.double, 1) == 2


async def test_one_failing_task_never_fails_another() -> None:
    async with aioproc.ProcessPool(2) as pool:
        submitted = [pool.submit(tasks.worker_task, t) for t in [1, 2, 0, 4, 5]]
        outcomes: list[Any] = []
        for task in submitted:
            try:
                outcomes.append(await task)
            except ValueError as exc:
                outcomes.append(str(exc))
        assert outcomes == [2, 4, "Invalid task value", 8, 10]


async def test_task_handle() -> None:
    async with aioproc.ProcessPool(1) as pool:
        task = pool.submit(tasks.double, 5)
        seen: list[int] = []
        done = anyio.Event()

        def callback(t: aioproc.Task[int]) -> None:
            seen.append(t.result())
            done.set()

        task.add_done_callback(callback)
        with pytest.raises(Exception, match="not done"):
            task.result()
        assert await task == 10
        await done.wait()
        assert seen == [10]
        assert task.done() and not task.cancelled()
        assert task.result() == 10 and task.exception() is None
        assert task.cancel() is False

        failing = pool.submit(tasks.fail, "nope")
        with pytest.raises(ValueError, match="nope"):
            await failing
        assert isinstance(failing.exception(), ValueError)

        late: list[int] = []
        task.add_done_callback(lambda t: late.append(t.result()))
        await pool.apply(tasks.double, 0)  # one loop turn at least
        assert late == [10]


# --- map, starmap, imap, imap_unordered -----------------------------------------------------


async def test_map_and_starmap(start_method: str) -> None:
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:
        assert await pool.map(tasks.double, [1, 2, 3, 4, 5]) == [2, 4, 6, 8, 10]
        assert await pool.map(tasks.double, range(1000)) == [2 * i for i in range(1000)]
        assert await pool.map(tasks.double, [], chunksize=3) == []
        assert await pool.map(tasks.async_double, range(10), chunksize=3) == [
            2 * i for i in range(10)
        ]
        assert await pool.starmap(tasks.add, [(1, 2), (3, 4)]) == [3, 7]


async def test_map_accepts_async_iterables() -> None:
    async def numbers() -> Any:
        for i in range(20):
            yield i

    async with aioproc.ProcessPool(2) as pool:
        assert await pool.map(tasks.double, numbers()) == [2 * i for i in range(20)]


async def test_map_raises_first_failure() -> None:
    async with aioproc.ProcessPool(2) as pool:
        with pytest.raises(ValueError, match="Invalid task value"):
            await pool.map(tasks.worker_task, [1, 2, 0, 4, 5], chunksize=1)
        assert await pool.apply(tasks.double, 3) == 6


async def test_imap_ordered_and_unordered(start_method: str) -> None:
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:
        ordered = [y async for y in pool.imap(tasks.double, range(200))]
        assert ordered == [2 * i for i in range(200)]
        unordered = [y async for y in pool.imap_unordered(tasks.double, iter(range(200)))]
        assert sorted(unordered) == ordered
        small = [y async for y in pool.imap(tasks.double, iter(range(50)), chunksize=7)]
        assert small == [2 * i for i in range(50)]


async def test_imap_consumes_lazily_with_backpressure() -> None:
    pulled = 0

    def numbers() -> Any:
        nonlocal pulled
        i = 0
        while True:  # infinite
            pulled += 1
            yield i
            i += 1

    async with aioproc.ProcessPool(2) as pool:
        results = []
        async for y in pool.imap(tasks.double, numbers(), chunksize=1):
            results.append(y)
            if len(results) == 10:
                break
        assert results == [2 * i for i in range(10)]
        # A bounded window: far fewer items pulled than an eager reader would take.
        assert pulled < 10 + 2 * 2 * 2 + 1
        assert await pool.apply(tasks.double, 1) == 2


async def test_imap_over_a_huge_range_stays_bounded() -> None:
    async with aioproc.ProcessPool(2) as pool:
        seen = []
        async for y in pool.imap(tasks.double, range(10**12)):
            seen.append(y)
            if len(seen) == 5:
                break
        assert seen == [0, 2, 4, 6, 8]


async def test_imap_async_source_streams_results_before_the_input_ends() -> None:
    send, receive = anyio.create_memory_object_stream[int](10)
    async with aioproc.ProcessPool(2) as pool, receive:
        out = pool.imap_unordered(tasks.double, receive)
        await send.send(1)
        assert await out.__anext__() == 2  # arrives while the input is still open
        await send.send(2)
        assert await out.__anext__() == 4
        await send.aclose()
        assert [y async for y in out] == []


async def test_breaking_out_of_imap_cancels_the_rest(tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with aioproc.ProcessPool(1) as pool:
        paths = [str(tmp_path / f"file{i}") for i in range(5)]
        it = pool.imap(tasks.touch, [*paths[:1], str(release)], chunksize=1)
        async with it:
            assert await it.__anext__() == paths[0]
        # The iterator is closed: nothing more is yielded.
        assert [y async for y in it] == []
        assert await pool.apply(tasks.double, 2) == 4


async def test_break_out_of_imap_cancels_running_work() -> None:
    async with aioproc.ProcessPool(1) as pool:
        async for y in pool.imap(tasks.block_unless_zero, [0, 1, 2], chunksize=1):
            assert y == 0
            break  # item 1 is running (forever) on the only worker
        # Only a cancelled item 1 (its worker killed and replaced) lets this run.
        with anyio.fail_after(20):
            assert await pool.apply(tasks.double, 5) == 10
        assert pool.statistics().restarts == 1


async def test_idle_pool_burns_no_cpu() -> None:
    async with aioproc.ProcessPool(2) as pool:
        await pool.map(tasks.double, range(10))
        before = [_cpu_ticks(pid) for pid in pool.statistics().pids]
        await anyio.sleep(1.0)  # measuring idleness, not waiting for an outcome
        after = [_cpu_ticks(pid) for pid in pool.statistics().pids]
    # Nothing wakes while idle. One clock tick of slack per worker: the kernel may charge a
    # tick to the last microseconds of the map's work when it samples.
    assert all(b - a <= 1 for a, b in zip(before, after, strict=True))


def _cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


async def test_imap_error_ends_iteration() -> None:
    async with aioproc.ProcessPool(2) as pool:
        seen = []
        with pytest.raises(ValueError, match="Invalid task value"):
            async for y in pool.imap(tasks.worker_task, [1, 2, 0, 4], chunksize=1):
                seen.append(y)
        assert seen == [2, 4]


# --- stream -------------------------------------------------------------------------------


async def test_stream_generators(start_method: str) -> None:
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        assert [i async for i in pool.stream(tasks.count_up, 200)] == list(range(200))
        assert [i async for i in pool.stream(tasks.async_count_up, 5)] == list(range(5))
        with pytest.raises(KeyError, match="midway"):
            async for _ in pool.stream(tasks.fail_midway, 3):
                pass


async def test_stream_items_arrive_as_yielded(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with aioproc.ProcessPool(1) as pool:
        stream = pool.stream(tasks.yield_then_block, str(gate))
        # The generator is blocked after its first item; we still get the first item.
        assert await stream.__anext__() == "first"
        gate.touch()
        assert await stream.__anext__() == "second"
        assert [x async for x in stream] == []


async def test_leaving_a_stream_early_stops_it(tmp_path: Path) -> None:
    gate = tmp_path / "never"
    async with aioproc.ProcessPool(1) as pool:
        first_pid = pool.statistics().pids[0]
        async with pool.stream(tasks.yield_then_block, str(gate)) as stream:
            assert await stream.__anext__() == "first"
        assert await pool.apply(tasks.double, 4) == 8
        assert pool.statistics().pids[0] != first_pid


# --- cancellation, timeouts, dead workers ---------------------------------------------------


async def test_cancelling_a_running_task_replaces_its_worker(start_method: str) -> None:
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        (old,) = pool.statistics().pids
        with anyio.move_on_after(0.3) as scope:
            await pool.apply(tasks.sleep_forever)
        assert scope.cancelled_caught
        assert await pool.apply(tasks.double, 5) == 10
        stats = pool.statistics()
        assert stats.workers == 1 and stats.pids[0] != old
        assert stats.restarts == 1


async def test_task_cancel_and_queued_task_never_starts(tmp_path: Path) -> None:
    release = tmp_path / "release"
    marker = tmp_path / "ran"
    async with aioproc.ProcessPool(1) as pool:
        blocker = pool.submit(tasks.wait_for_file, str(release))
        queued = pool.submit(tasks.touch, str(marker))
        assert queued.cancel() is True
        assert queued.cancelled()
        release.touch()
        assert await blocker == str(release)
        assert await pool.apply(tasks.double, 1) == 2
        assert not marker.exists()
        with pytest.raises(asyncio.CancelledError):
            await queued


async def test_cancelled_task_sent_ahead_never_starts(tmp_path: Path) -> None:
    release = tmp_path / "release"
    marker = tmp_path / "ran"
    async with aioproc.ProcessPool(1) as pool:
        for i in range(50):  # tiny tasks: the pool starts handing work out ahead
            await pool.apply(tasks.double, i)
        blocker = pool.submit(tasks.wait_for_file, str(release))
        ahead = pool.submit(tasks.touch, str(marker))
        await anyio.sleep(0.2)  # both reach the worker's pipe
        assert ahead.cancel()
        release.touch()
        assert await blocker == str(release)
        assert await pool.apply(tasks.double, 1) == 2
        assert not marker.exists()
        assert pool.statistics().restarts == 0


async def test_cancel_with_max_tasks_per_child_does_not_stall(tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with aioproc.ProcessPool(1, max_tasks_per_child=2) as pool:
        for i in range(6):
            await pool.apply(tasks.double, i)
        blocker = pool.submit(tasks.wait_for_file, str(release))
        ahead = pool.submit(tasks.double, 1)
        await anyio.sleep(0.2)
        ahead.cancel()
        release.touch()
        await blocker
        with anyio.fail_after(20):
            assert await pool.apply(tasks.double, 4) == 8


async def test_abandoned_stream_does_not_hold_the_pool_open() -> None:
    with anyio.fail_after(20):
        async with aioproc.ProcessPool(1) as pool:
            stream = pool.stream(tasks.count_up, 10_000)
            assert await stream.__anext__() == 0
    with pytest.raises(aioproc.PoolClosedError, match="stream was still running"):
        async for _ in stream:
            pass


async def test_task_timeout(start_method: str) -> None:
    async with aioproc.ProcessPool(1, task_timeout=0.3, start_method=start_method) as pool:
        with pytest.raises(TimeoutError, match=r"timeout of 0\.3"):
            await pool.apply(tasks.sleep_forever)
        assert await pool.apply(tasks.double, 3) == 6
        assert pool.statistics().restarts == 1


async def test_task_timeout_does_not_count_the_workers_start_up(start_method: str) -> None:
    # The initializer takes longer than the timeout: each task is timed from when its
    # worker is ready, so none fails, even on the replacement of a killed worker.
    async with aioproc.ProcessPool(
        1,
        task_timeout=0.5,
        initializer=tasks.slow_initializer,
        initargs=(0.8,),
        start_method=start_method,
    ) as pool:
        assert await pool.apply(tasks.square_slowly, 3, 0.1) == 9
        with pytest.raises(TimeoutError):
            await pool.apply(tasks.sleep_forever)  # its own run still counts
        assert await pool.apply(tasks.square_slowly, 4, 0.1) == 16


async def test_a_finished_coroutine_is_not_lost_when_its_worker_crashes() -> None:
    # Both reach the worker in one write and start in the same loop turn there: the
    # coroutine finishes first, then the other task kills the process.
    async with aioproc.ProcessPool(1, concurrency=2) as pool:
        finished = pool.submit(tasks.async_double_at_once, 21)
        crashing = pool.submit(tasks.segfault)
        assert await finished == 42
        with pytest.raises(aioproc.WorkerDiedError, match="SIGSEGV"):
            await crashing


async def test_async_task_cancelled_inside_a_concurrent_worker() -> None:
    async with aioproc.ProcessPool(1, concurrency=4) as pool:
        (pid,) = pool.statistics().pids
        with anyio.move_on_after(0.3):
            await pool.apply(tasks.async_sleep_forever)
        assert await pool.apply(tasks.async_double, 2) == 4
        # The coroutine was cancelled in place: same worker, no restart.
        assert pool.statistics().pids == (pid,)


async def test_task_ignoring_cancellation_in_a_concurrent_worker_is_killed() -> None:
    async with aioproc.ProcessPool(1, concurrency=2) as pool:
        (pid,) = pool.statistics().pids
        with anyio.move_on_after(0.2):
            await pool.apply(tasks.sleep_forever)  # a plain function: cannot be cancelled
        with anyio.fail_after(10):
            while pool.statistics().restarts == 0:
                await anyio.sleep(0.05)
        assert await pool.apply(tasks.double, 2) == 4
        assert pool.statistics().pids != (pid,)


async def test_retries_rerun_a_task_whose_worker_died(tmp_path: Path) -> None:
    async with aioproc.ProcessPool(1, retries=1) as pool:
        first = pool.statistics().pids[0]
        pid = await pool.apply(tasks.die_once, str(tmp_path / "marker"))
        assert pid != first


# --- workers: initializer, recycling, concurrency, output ----------------------------------


async def test_initializer_runs_in_each_worker(start_method: str) -> None:
    async with aioproc.ProcessPool(
        2, initializer=tasks.set_state, initargs=("greeting", "hi"), start_method=start_method
    ) as pool:
        assert await pool.map(tasks.get_state, ["greeting"] * 4, chunksize=1) == ["hi"] * 4
    async with aioproc.ProcessPool(1, initializer=tasks.async_initializer, initargs=(5,)) as p:
        assert await p.apply(tasks.get_state, "async_init") == 5


async def test_workers_see_the_environment_of_today(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        await pool.apply(tasks.double, 1)  # the fork server, if any, is up by now
    monkeypatch.setenv("AIOPROC_TEST_VALUE", "today")
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        assert await pool.apply(tasks.getenv, "AIOPROC_TEST_VALUE") == "today"


async def test_script_functions_share_one_global_namespace(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import asyncio, aioproc\n"
        "config = None\n"
        "def init(value):\n"
        "    global config\n"
        "    config = value\n"
        "def task():\n"
        "    return config\n"
        "async def main():\n"
        "    async with aioproc.ProcessPool(1, initializer=init, initargs=('on',)) as pool:\n"
        "        print(await pool.apply(task))\n"
        "asyncio.run(main())\n"
    )
    done = await anyio.run_process([sys.executable, str(script)], check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "on"


async def test_max_tasks_per_child_recycles_workers() -> None:
    async with aioproc.ProcessPool(1, max_tasks_per_child=2) as pool:
        pids = [await pool.apply(tasks.pid) for _ in range(6)]
        assert len(set(pids)) == 3
        backlog = [pool.submit(tasks.pid) for _ in range(7)]
        done = [await t for t in backlog]
        assert len(done) == 7 and len(set(done)) == 4


async def test_concurrency_runs_coroutines_together() -> None:
    async with aioproc.ProcessPool(1, concurrency=4) as pool:
        results = await pool.map(tasks.rendezvous, [4] * 4, chunksize=1)
        assert sorted(results) == [4, 4, 4, 4]


async def test_output_and_logging_reach_the_parent(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.speak, "hello from a worker") == "hello from a worker"
        await pool.apply(tasks.log, "app.worker", logging.WARNING, "careful")
        await pool.apply(tasks.log, "app.worker", logging.DEBUG, "not shown")
    out, err = capsys.readouterr()
    assert "hello from a worker\n" in out
    assert "err:hello from a worker\n" in err
    records = [r for r in caplog.records if r.name == "app.worker"]
    assert [(r.levelno, r.getMessage()) for r in records] == [(logging.WARNING, "careful")]
    assert records[0].process != os.getpid()


# --- serialisation errors -------------------------------------------------------------------


# --- life cycle -----------------------------------------------------------------------------


async def test_closing_waits_for_work_and_leaves_nothing(start_method: str) -> None:
    pool = aioproc.ProcessPool(2, start_method=start_method)
    async with pool:
        pending = [pool.submit(tasks.square_slowly, i, 0.05) for i in range(6)]
    assert [t.result() for t in pending] == [i * i for i in range(6)]
    assert pool.statistics().workers == 0
    with pytest.raises(aioproc.PoolClosedError):
        await pool.apply(tasks.double, 1)


async def test_statistics() -> None:
    async with aioproc.ProcessPool(2) as pool:
        await pool.map(tasks.double, range(4), chunksize=1)
        with pytest.raises(ValueError, match="boom"):
            await pool.apply(tasks.fail)
        stats = pool.statistics()
        assert stats.workers == 2 and stats.busy == 0 and stats.queued == 0
        assert stats.completed == 4 and stats.failed == 1 and stats.restarts == 0
        with pytest.raises(AttributeError):
            stats.workers = 3  # type: ignore[misc]


async def test_default_pool_run() -> None:
    assert await aioproc.run(tasks.double, 8) == 16
    assert await aioproc.run(tasks.async_double, 1) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        ({"max_workers": 1.5}, TypeError, "max_workers must be an int"),
        ({"concurrency": 0}, ValueError, "concurrency must be greater than 0"),
        ({"retries": -1}, ValueError, "retries must be at least 0"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child must be greater"),
        ({"task_timeout": -1}, ValueError, "task_timeout must be a positive number"),
        ({"start_method": "thread"}, ValueError, "start_method must be one of"),
        ({"initializer": 3}, TypeError, "initializer must be callable"),
    ],
)
def test_bad_arguments_are_named(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        aioproc.ProcessPool(**kwargs)


async def test_bad_call_arguments() -> None:
    async with aioproc.ProcessPool(1) as pool:
        with pytest.raises(TypeError, match="fn must be callable"):
            await pool.apply(3)  # type: ignore[call-overload]
        with pytest.raises(ValueError, match="chunksize must be greater than 0"):
            await pool.map(tasks.double, [1], chunksize=0)


def test_needs_a_running_loop() -> None:
    pool = aioproc.ProcessPool(1)
    with pytest.raises(RuntimeError, match="running event loop"):
        pool.submit(tasks.double, 1)


async def test_an_environment_that_is_not_utf8(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Names and values are the OS's bytes: one that is not UTF-8 must not stop a pool.
    monkeypatch.setenv("AIOPROC_TEST_BYTES", os.fsdecode(b"caf\xe9"))
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        assert await pool.apply(tasks.getenvb, "AIOPROC_TEST_BYTES") == b"caf\xe9"


# --- map and imap results arrive as they complete (issue 9, item 12) ------------------------
#
# The tests below hold each item until the parent has received as many results as the
# item's number (see tests/map_tasks.py): they finish only if a worker hands back each
# finished result while the rest of its chunk is still running.


class _Gates:
    """The parent's side of tests/map_tasks.py's gates: gate k opens at k results."""

    def __init__(self, where: Path) -> None:
        self.dir = where
        self.opened = 0
        (where / "0").touch()

    def received(self, total: int) -> None:
        while self.opened < total:
            self.opened += 1
            (self.dir / str(self.opened)).touch()


@pytest.mark.parametrize("ordered", [False, True], ids=["imap_unordered", "imap"])
@pytest.mark.parametrize("concurrency", [1, 2])
async def test_imap_yields_results_before_their_chunk_ends(
    tmp_path: Path, ordered: bool, concurrency: int
) -> None:
    gates = _Gates(tmp_path)
    fn: Any = map_tasks.gated if concurrency == 1 else map_tasks.async_gated
    async with aioproc.ProcessPool(1, concurrency=concurrency) as pool:
        # The default chunk size puts 5 to 10 items in each chunk.
        source = range(40)
        it = (pool.imap if ordered else pool.imap_unordered)(
            functools.partial(fn, gates=str(tmp_path)), source
        )
        seen: list[int] = []
        with anyio.fail_after(30):
            async with it:
                async for y in it:
                    seen.append(y)
                    gates.received(len(seen))
        assert (seen if ordered else sorted(seen)) == list(source)
        assert pool.statistics().completed == len(source)


async def test_map_progress_shows_in_statistics(tmp_path: Path) -> None:
    gates = _Gates(tmp_path)
    n = 30
    async with aioproc.ProcessPool(2) as pool:

        async def watch() -> None:
            # What a progress bar would do: read the count of finished items now and then.
            while gates.opened < n:
                gates.received(pool.statistics().completed)
                await anyio.sleep(0.001)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                fn = functools.partial(map_tasks.gated, gates=str(tmp_path))
                results = await pool.map(fn, range(n))
        assert results == list(range(n))
        assert pool.statistics().completed == n


async def test_statistics_count_map_items_not_chunks() -> None:
    async with aioproc.ProcessPool(2) as pool:
        await pool.map(tasks.double, range(100))
        assert pool.statistics().completed == 100
        assert len([y async for y in pool.imap_unordered(tasks.double, range(50))]) == 50
        assert pool.statistics().completed == 150
        await pool.starmap(tasks.add, [(1, 2)] * 10, chunksize=3)
        stats = pool.statistics()
        assert (stats.completed, stats.failed) == (160, 0)


async def test_a_failing_item_still_delivers_the_items_before_it() -> None:
    async with aioproc.ProcessPool(1) as pool:
        seen = []
        with pytest.raises(ValueError, match="Invalid task value"):
            async for y in pool.imap_unordered(tasks.worker_task, [1, 2, 0, 4], chunksize=4):
                seen.append(y)
        assert seen == [2, 4]  # the same chunk as the failing item
        stats = pool.statistics()
        assert (stats.completed, stats.failed) == (2, 1)


@pytest.mark.parametrize("retries", [0, 1])
async def test_a_dead_worker_fails_only_the_undelivered_items(tmp_path: Path, retries: int) -> None:
    """Items 0-2 are delivered, then item 3 kills the worker, in the same chunk of 8.

    Without retries, items 3-7 fail with WorkerDiedError and nothing delivered is lost;
    with one retry, only items 3-7 run again, and every result arrives once.
    """
    gates_dir = tmp_path / "gates"
    gates_dir.mkdir()
    gates = _Gates(gates_dir)
    log = tmp_path / "log"
    fn = functools.partial(
        map_tasks.gated,
        gates=str(gates_dir),
        log=str(log),
        die_at=3,
        marker=str(tmp_path / "died"),
    )
    async with aioproc.ProcessPool(1, retries=retries) as pool:
        seen: list[int] = []
        with anyio.fail_after(30):
            if retries:
                async for y in pool.imap_unordered(fn, range(8), chunksize=8):
                    seen.append(y)
                    gates.received(len(seen))
            else:
                with pytest.raises(aioproc.WorkerDiedError, match="exited with code 7"):
                    async for y in pool.imap_unordered(fn, range(8), chunksize=8):
                        seen.append(y)
                        gates.received(len(seen))
        stats = pool.statistics()
    runs = [int(line) for line in log.read_text().split()]
    if retries:
        assert seen == list(range(8))
        assert runs == [0, 1, 2, 3, 3, 4, 5, 6, 7]  # the retry starts at item 3
        assert (stats.completed, stats.failed, stats.restarts) == (8, 0, 1)
    else:
        assert seen == [0, 1, 2]
        assert runs == [0, 1, 2, 3]
        assert (stats.completed, stats.failed, stats.restarts) == (3, 1, 1)


# --- several iterables, as builtin map ----------------------------------------------------


class _Letters:
    """An async iterable (not an async generator: zip leaves it unfinished, and trio warns
    about an async generator collected unfinished)."""

    def __init__(self, text: str) -> None:
        self._letters = iter(text)

    def __aiter__(self) -> _Letters:
        return self

    async def __anext__(self) -> str:
        await anyio.lowlevel.checkpoint()
        try:
            return next(self._letters)
        except StopIteration:
            raise StopAsyncIteration from None


async def test_map_zips_several_iterables_to_the_shortest() -> None:
    async with aioproc.ProcessPool(2) as pool:
        assert await pool.map(tasks.add, [1, 2, 3], [10, 20]) == [11, 22]
        assert await pool.map(pow, [2, 3, 4], (5, 2, 1), [7, 7, 7]) == [4, 2, 4]
        assert await pool.map(tasks.add, range(500), range(500), chunksize=7) == list(
            range(0, 1000, 2)
        )
        assert await pool.map(tasks.add, [], [1]) == []
        # Items are passed as they are: tuples stay single arguments.
        assert await pool.map(tasks.identity_type, [(1, 2)]) == [("tuple", (1, 2))]


async def test_map_zips_async_and_sync_iterables_item_by_item() -> None:
    async def concat(a: str, b: int) -> str:
        return f"{a}{b}"

    async with aioproc.ProcessPool(2) as pool:
        assert await pool.map(concat, _Letters("abc"), itertools.count()) == ["a0", "b1", "c2"]
        assert await pool.map(concat, "xy", _Letters("abcd")) == ["xa", "yb"]
        ordered = [y async for y in pool.imap(concat, _Letters("abcd"), range(3))]
        assert ordered == ["a0", "b1", "c2"]


async def test_imap_zips_several_iterables_lazily() -> None:
    async with aioproc.ProcessPool(2) as pool:
        # An infinite iterable next to a finite one ends with the finite one, as zip does.
        ordered = [y async for y in pool.imap(tasks.add, itertools.count(), [5, 6, 7])]
        assert ordered == [5, 7, 9]
        unordered = pool.imap_unordered(tasks.add, range(100), itertools.count(1000), chunksize=3)
        assert sorted([y async for y in unordered]) == [1000 + 2 * i for i in range(100)]
        seen = []
        async for y in pool.imap(tasks.add, itertools.count(), itertools.count()):
            seen.append(y)
            if len(seen) == 4:
                break
        assert seen == [0, 2, 4, 6]
        # With an async input, each call goes out as soon as its items are there.
        send, receive = anyio.create_memory_object_stream[int](10)
        async with receive:
            out = pool.imap(tasks.add, receive, itertools.count(100), chunksize=1)
            await send.send(1)
            assert await out.__anext__() == 101  # while the async input is still open
            await send.send(2)
            assert await out.__anext__() == 103
            await send.aclose()
            assert [y async for y in out] == []


async def test_map_needs_iterables() -> None:
    async with aioproc.ProcessPool(1) as pool:
        with pytest.raises(TypeError, match=r"map\(\) needs at least one iterable"):
            await pool.map(tasks.double)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match=r"imap\(\) needs at least one iterable"):
            pool.imap(tasks.double)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match=r"argument 3 of map\(\) must be iterable; got int"):
            await pool.map(tasks.add, [1], 5)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match=r"imap_unordered\(\) must be iterable; got int"):
            pool.imap_unordered(tasks.double, 5)  # type: ignore[call-overload]
        assert await pool.apply(tasks.double, 2) == 4
