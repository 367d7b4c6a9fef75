"""The fault matrix of FAULTS.md: each row proven under every start method.

A test is named after its row (``test_rowN_...``). Async tests also run under asyncio,
uvloop and trio. Every test runs under the autouse leak guard of conftest.py (no child
process, fd, thread or /dev/shm entry left) and pytest-timeout's hard limit.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aioproc
from aioproc._core import _hub, _wire
from tests import procs, tasks

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


async def _healthy(pool: aioproc.ProcessPool, workers: int) -> None:
    """FAULTS.md's "healthy": the next apply succeeds, and every worker is there."""
    assert await pool.apply(tasks.double, 21) == 42
    stats = pool.statistics()
    assert stats.workers == workers
    assert stats.busy == 0 and stats.queued == 0


async def _running_on(pool: aioproc.ProcessPool, fn: Callable[..., Any]) -> tuple[Any, int]:
    """Submit ``fn(queue)``, which puts its worker's pid on the queue once it runs; return
    the task and that pid."""
    announce = aioproc.Queue()
    task = pool.submit(fn, announce)
    with anyio.fail_after(30):
        pid = await announce.get()
    return task, pid


async def _only_that_task_fails(
    pool: aioproc.ProcessPool,
    fault: Callable[[], Awaitable[Any]],
    expected: str,
) -> None:
    """Run ``fault`` beside a slow task on the other worker, after tiny tasks that the
    pool hands out ahead (some reach the worker that dies in the same read as the
    fault): the fault fails with a WorkerDiedError matching ``expected``, every other
    task completes, the worker is replaced and the pool is healthy."""
    for i in range(20):  # tiny tasks: the pool starts handing work out ahead
        await pool.apply(tasks.double, i)
    other = pool.submit(tasks.square_slowly, 3, 0.5)
    tiny = [pool.submit(tasks.double, i) for i in range(20)]
    with pytest.raises(aioproc.WorkerDiedError, match=expected):
        await fault()
    assert [await t for t in tiny] == [2 * i for i in range(20)]
    assert await other == 9
    assert pool.statistics().restarts == 1
    await _healthy(pool, 2)


# --- rows 1-3: a worker dies mid-task ---------------------------------------------------------


async def test_row1_worker_sigkilled_mid_task(start_method: str) -> None:
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:

        async def fault() -> None:
            task, pid = await _running_on(pool, tasks.announce_then_sleep)
            os.kill(pid, signal.SIGKILL)  # as the OOM killer would
            with anyio.fail_after(1):  # FAULTS.md: within 1 s
                await task
            raise AssertionError("unreachable: the task cannot succeed")

        await _only_that_task_fails(pool, fault, "killed by SIGKILL")


async def test_row2_segfault_in_a_task(start_method: str) -> None:
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:
        await _only_that_task_fails(pool, lambda: pool.apply(tasks.segfault), "SIGSEGV")


async def test_row3_os_exit_and_sys_exit_in_a_task(start_method: str) -> None:
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:
        await _only_that_task_fails(
            pool, lambda: pool.apply(tasks.exit_with, 3), "exited with code 3"
        )
        pids = pool.statistics().pids
        with pytest.raises(SystemExit) as info:
            await pool.apply(tasks.sys_exit, 4)
        assert info.value.code == 4
        # SystemExit is the task's error, like any other: its worker lives on.
        assert pool.statistics().pids == pids
        await _healthy(pool, 2)


# --- rows 4-7: what cannot be sent, rebuilt or raised ------------------------------------------


async def test_row4_argument_that_cannot_be_serialised(start_method: str) -> None:
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        before = pool.statistics()
        with socket.socket() as sock:
            with pytest.raises(aioproc.SerializationError, match=r"argument 1 of type 'socket"):
                pool.submit(tasks.add, 1, sock)  # raised by submit itself
            with pytest.raises(aioproc.SerializationError, match=r"argument 0 of type '_thread"):
                await pool.apply(tasks.echo, threading.Lock())
            with pytest.raises(aioproc.SerializationError, match="keyword argument 'scale'"):
                pool.submit(tasks.add, 1, 2, scale=tasks.Unpicklable())
            with pytest.raises(aioproc.SerializationError, match="input item 2 of type 'socket"):
                await pool.map(tasks.echo, [1, 2, sock])
        # Nothing was dispatched: no task ran, failed or waits, the worker is the same.
        assert pool.statistics() == before
        await _healthy(pool, 1)
        assert pool.statistics().pids == before.pids


async def test_row5_argument_fails_to_rebuild_in_the_worker(start_method: str) -> None:
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        with pytest.raises(aioproc.SerializationError, match="no rebuilding here"):
            await pool.apply(tasks.echo, tasks.FailsToLoad())
        with pytest.raises(aioproc.WorkerDiedError, match="exited with code 11"):
            await pool.apply(tasks.echo, tasks.ExitsWhileLoading())
        with pytest.raises(aioproc.WorkerDiedError, match="SIGSEGV"):
            await pool.apply(tasks.echo, tasks.CrashesWhileLoading())
        await _healthy(pool, 1)


async def test_row6_result_that_cannot_be_serialised(start_method: str) -> None:
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        (pid,) = pool.statistics().pids
        with pytest.raises(
            aioproc.SerializationError, match=r"cannot send the result of type '_thread\.lock'"
        ):
            await pool.apply(tasks.return_unpicklable)
        await _healthy(pool, 1)
        assert pool.statistics().pids == (pid,)  # the worker was reused


@pytest.mark.parametrize(
    ("fn", "type_name", "message"),
    [
        (tasks.raise_lock_holding, "tests.tasks.LockHoldingError", "holding a lock"),
        (tasks.raise_odd, "tests.tasks.OddError", "odd 1 2"),  # pickles, cannot be rebuilt
    ],
    ids=["unpicklable", "unrebuildable"],
)
async def test_row7_exception_that_cannot_travel(
    start_method: str, fn: Any, type_name: str, message: str
) -> None:
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        with pytest.raises(aioproc.RemoteError) as info:
            await pool.apply(fn)
        error = info.value
        assert isinstance(error, aioproc.AioprocError)
        assert error.type_name == type_name
        assert message in str(error)
        assert f"in {fn.__name__}" in error.traceback
        assert error.traceback.startswith("Traceback (most recent call last):")
        await _healthy(pool, 1)
        assert pool.statistics().restarts == 0


# --- rows 8-10: initializer, timeouts, cancellation ------------------------------------------


async def test_row8_failing_initializer(start_method: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    pool = aioproc.ProcessPool(
        2, initializer=tasks.count_run, initargs=(str(runs),), start_method=start_method
    )
    async with pool:
        pending = [pool.submit(tasks.double, i) for i in range(5)]
        for task in pending:
            with pytest.raises(aioproc.WorkerDiedError, match="initializer") as info:
                await task
            cause = info.value.__cause__
            assert isinstance(cause, RuntimeError) and "initializer exploded" in str(cause)
        with pytest.raises(aioproc.PoolClosedError) as later:
            await pool.apply(tasks.double, 1)
        assert isinstance(later.value.__cause__, aioproc.WorkerDiedError)
        assert isinstance(later.value.__cause__.__cause__, RuntimeError)
    # No respawn loop: each of the two workers ran the initializer once, none was replaced.
    assert len(runs.read_text().split()) <= 2
    assert pool.statistics().restarts == 0
    assert pool.statistics().workers == 0


@pytest.mark.parametrize(
    "fn", [tasks.announce_then_sleep, tasks.ignore_sigterm_then_sleep], ids=["sleeps", "no-term"]
)
async def test_row9_task_past_its_timeout(start_method: str, fn: Any) -> None:
    timeout = 0.5
    async with aioproc.ProcessPool(2, task_timeout=timeout, start_method=start_method) as pool:
        task, pid = await _running_on(pool, fn)
        with anyio.fail_after(timeout + 2), pytest.raises(TimeoutError, match=r"timeout of 0\.5"):
            await task
        with anyio.fail_after(10):
            while procs.alive(pid):  # killed, SIGTERM or not
                await anyio.sleep(0.01)
        assert pid not in pool.statistics().pids
        assert pool.statistics().restarts == 1
        await _healthy(pool, 2)


async def test_row10_caller_cancelled_while_its_task_runs_1000_times(
    start_method: str, anyio_backend: Any
) -> None:
    # Each cancellation kills a worker and starts another. 1000 in a row under asyncio; a
    # tenth of that under uvloop and trio, whose part (the caller's cancellation) is the
    # same path. Under spawn every replacement is a new interpreter (~50 ms of CPU), so
    # a quarter of that, to keep the suite within its time budget.
    rounds = 1000 if anyio_backend == ("asyncio", {}) else 100
    if start_method == "spawn":
        rounds //= 4
    announce = aioproc.Queue()
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:
        await _healthy(pool, 2)
        baseline = len(procs.descendants())
        for i in range(rounds):
            with anyio.CancelScope() as scope:
                task = pool.submit(tasks.announce_then_sleep, announce)
                await announce.get()  # it runs

                async def cancel_soon() -> None:
                    await anyio.lowlevel.checkpoint()
                    scope.cancel()

                if i % 2:  # half by the caller's cancel scope, half by Task.cancel()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(cancel_soon)
                        await task
                else:
                    assert task.cancel()
            assert task.cancelled()
        assert pool.statistics().restarts == rounds
        await _healthy(pool, 2)
        assert await pool.map(tasks.double, range(20)) == [2 * i for i in range(20)]
        # No process growth: killed workers are reaped as their replacements start.
        with anyio.fail_after(10):
            while len(procs.descendants()) > baseline:
                await anyio.sleep(0.02)


# --- rows 11-13: the parent goes away, or the pool does ----------------------------------------


@pytest.mark.parametrize(
    ("busy", "signum"),
    [(False, signal.SIGKILL), (True, signal.SIGKILL), (True, signal.SIGTERM)],
    ids=["idle", "busy", "busy-sigterm"],  # SIGTERM's default action ends it as abruptly
)
def test_row11_parent_sigkilled(start_method: str, busy: bool, signum: int, tmp_path: Path) -> None:
    with procs.child(
        procs.script(
            """
            import asyncio, os, time
            import aioproc
            from aioproc._core import _spawn

            def spin(shared):
                os.fork() == 0 and time.sleep(60)  # a grandchild too
                shared.value += 1
                while True:
                    pass

            async def main():
                shared = aioproc.Value("q", 0)
                payload = b"x" * (8 << 20)  # shared memory in flight as well
                async with aioproc.ProcessPool(2, start_method=METHOD) as pool:
                    pids = list(pool.statistics().pids)
                    server = _spawn._forkserver
                    if server is not None:
                        pids.append(server.pid)
                    if BUSY:
                        pool.submit(spin, shared)
                        pool.submit(spin, shared)
                        while shared.value < 2:
                            await asyncio.sleep(0.01)
                        pool.submit(len, payload)
                    print(*pids, flush=True)
                    await asyncio.sleep(60)

            asyncio.run(main())
            """,
            METHOD=start_method,
            BUSY=busy,
        ),
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its temporary files, if any, land here
    ) as child:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]
        assert len(pids) >= 2
        assert all(procs.alive(pid) for pid in pids)
        child.send_signal(signum)
        assert child.wait() == -signum
        # Every worker, its process group (the grandchild) and the fork server: gone
        # within 2 s of the parent's death.
        assert procs.wait_gone(pids, 2.0) == []
        # Shared memory is anonymous (memfd): freed with the last process that mapped
        # it, and never a name in /dev/shm that could outlive them.
        assert procs.aioproc_shm() == set()
        # Nor anything else on the file system: the hub's socket has no path.
        assert os.listdir(tmp_path) == []


def test_row12_one_ctrl_c_ends_the_program(start_method: str, tmp_path: Path) -> None:
    with procs.child(
        procs.script(
            """
            import asyncio, sys, time, aioproc
            from aioproc._core import _spawn

            def slow(x):
                time.sleep(30)
                return x

            async def main():
                queue = aioproc.Queue()  # the IPC hub is up as well
                async with aioproc.ProcessPool(2, start_method=METHOD) as pool:
                    stream = pool.imap(slow, range(8), chunksize=1)
                    started = asyncio.ensure_future(stream.__anext__())
                    await asyncio.sleep(0.2)  # both workers are in slow()
                    pids = list(pool.statistics().pids)
                    server = _spawn._forkserver
                    print(*pids, *([server.pid] if server else []), flush=True)
                    await pool.map(slow, range(8), chunksize=1)

            try:
                asyncio.run(main())
            except KeyboardInterrupt:
                sys.exit(130)
            """,
            METHOD=start_method,
        ),
        cwd=ROOT,
        start_new_session=True,  # its own process group, as a shell job would be
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its temporary files, if any, land here
    ) as child:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]  # workers, fork server
        assert len(pids) == (3 if start_method == "forkserver" else 2)
        os.killpg(child.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert child.wait(timeout=2) == 130
        assert procs.wait_gone(pids, 2.0) == []
        assert os.listdir(tmp_path) == []  # nothing left on the file system


async def test_row13_pool_closed_with_a_backlog(start_method: str) -> None:
    pool = aioproc.ProcessPool(1, start_method=start_method)
    async with pool:  # leaving waits for the backlog
        backlog = [pool.submit(tasks.square_slowly, i, 0.02) for i in range(6)]
    assert [t.result() for t in backlog] == [i * i for i in range(6)]

    pool = aioproc.ProcessPool(1, start_method=start_method)
    with pytest.raises(RuntimeError, match="leaving"):
        async with pool:  # an error inside the block cancels it
            running = pool.submit(tasks.sleep_forever)
            backlog = [pool.submit(tasks.double, i) for i in range(6)]
            raise RuntimeError("leaving")
    for task in [running, *backlog]:
        with pytest.raises(asyncio.CancelledError):  # under trio too: see docs/pools.md
            await task
        assert task.cancelled()
    with pytest.raises(aioproc.PoolClosedError):
        pool.submit(tasks.double, 1)


async def test_row13_pool_collected_with_a_backlog(start_method: str) -> None:
    pool = aioproc.ProcessPool(1, start_method=start_method)
    await pool.__aenter__()
    pids = list(pool.statistics().pids)
    running = pool.submit(tasks.sleep_forever)
    backlog = [pool.submit(tasks.double, i) for i in range(3)]
    with pytest.warns(ResourceWarning, match="unclosed"):
        del pool  # the last reference: collected here
    for task in [running, *backlog]:
        with anyio.fail_after(10), pytest.raises(aioproc.PoolClosedError):
            await task
    assert not [pid for pid in pids if procs.alive(pid)]


def test_row13_interpreter_exits_with_a_backlog(start_method: str) -> None:
    done = subprocess.run(
        procs.script(
            """
            import asyncio, time, aioproc

            outcomes = []

            def slow(x):
                time.sleep(30)
                return x

            async def wait(task):
                try:
                    outcomes.append(await task)
                except BaseException as exc:
                    outcomes.append(type(exc).__name__)

            async def main():
                pool = aioproc.ProcessPool(2, start_method=METHOD)
                backlog = [pool.submit(slow, i) for i in range(6)]
                for task in backlog:
                    asyncio.ensure_future(wait(task))
                await asyncio.sleep(0.2)
                print(*pool.statistics().pids, flush=True)
                # main returns with the pool open and six tasks outstanding

            asyncio.run(main())
            print(*outcomes, flush=True)
            """,
            METHOD=start_method,
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    pids_line, outcomes_line = done.stdout.splitlines()
    # Each waiting task resolved: the pool shut down with the loop, or asyncio.run
    # cancelled the waiter first.
    outcomes = outcomes_line.split()
    assert len(outcomes) == 6
    assert set(outcomes) <= {"PoolClosedError", "CancelledError"}, outcomes
    pids = [int(p) for p in pids_line.split()]
    assert procs.wait_gone(pids, 2.0) == []
    assert "Traceback" not in done.stderr


# --- row 14: recycling --------------------------------------------------------------------


async def test_row14_max_tasks_per_child_with_a_backlog(start_method: str) -> None:
    async with aioproc.ProcessPool(2, max_tasks_per_child=3, start_method=start_method) as pool:
        first = set(pool.statistics().pids)
        backlog = [pool.submit(tasks.pid) for _ in range(20)]
        pids = [await task for task in backlog]
        per_worker = collections.Counter(pids)
        assert max(per_worker.values()) <= 3
        assert len(per_worker) >= 7  # 20 tasks, 3 per worker at most
        assert not first & set(pool.statistics().pids)
        await _healthy(pool, 2)


# --- row 15: large payloads ----------------------------------------------------------------


async def test_row15_crash_while_a_large_payload_is_in_flight(start_method: str) -> None:
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:
        payload = b"\x01" * (64 << 20)
        with pytest.raises(aioproc.WorkerDiedError, match="SIGKILL"):
            await pool.apply(tasks.kill_self, signal.SIGKILL, payload)
        with pytest.raises(aioproc.WorkerDiedError, match="SIGKILL"):
            await pool.apply(tasks.die_while_sending_result, 64 << 20)
        assert await pool.apply(tasks.describe_buffer, payload) == ("bytes", 64 << 20, None)
        await _healthy(pool, 2)


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", [("asyncio", {})])  # 6 GiB of copies: one loop
async def test_row15_payload_over_2_gib_round_trips(start_method: str, anyio_backend: Any) -> None:
    size = 2**31 + 4096
    data = bytearray(size)
    data[:: 1 << 20] = b"\x07" * len(range(0, size, 1 << 20))
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        back = await pool.apply(tasks.echo, data)
        assert type(back) is bytearray and len(back) == size
        same = back == data  # not in the assert: pytest would diff 2 GiB on a failure
        assert same, "the payload came back changed"
        del back, data
        await _healthy(pool, 1)


# --- row 16: owners that die -----------------------------------------------------------------


async def test_row16_lock_holder_dies(start_method: str) -> None:
    lock = aioproc.Lock()
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        with pytest.raises(aioproc.WorkerDiedError):
            await pool.apply(tasks.lock_and_die, lock)
        with anyio.fail_after(10), pytest.raises(aioproc.LockOwnerDiedError):
            await lock.acquire()
        async with lock:  # free again
            assert lock.locked()
        assert not lock.locked()
        await _healthy(pool, 1)


async def test_row16_creator_of_shared_memory_exits(start_method: str) -> None:
    _hub.local_hub().ensure_attached()  # the children will be told where the hub is
    gc.collect()
    before = procs.memfds()
    # The creator exits while this process still uses its Value: the value lives on.
    maker = aioproc.Process(target=tasks.make_value, args=(7,), start_method=start_method)
    maker.start()
    value = await maker.result()
    assert await maker.join() == 0
    assert value.value == 8
    value.value += 1
    assert value.value == 9
    # Once no process uses it, it is freed.
    del value, maker  # the Process handle keeps its result
    gc.collect()
    _hub.local_hub().poll()
    assert procs.memfds() == before
    # The creator crashes with the only handle: freed as well.
    crasher = aioproc.Process(target=tasks.create_value_and_die, start_method=start_method)
    crasher.start()
    assert await crasher.join() == 5
    _hub.local_hub().poll()  # the hub reads the dead child's end of its connection
    assert procs.memfds() == before
    assert procs.aioproc_shm() == set()


# --- row 17: malformed and hostile frames ------------------------------------------------------


@pytest.mark.parametrize(
    ("junk", "expected"),
    [
        (b"\x05\x00\x00\x00\xc1\xc1\xc1\xc1\xc1", "malformed frame"),  # garbage
        (b"\xff\xff\xff\xf0", "frame length 4043309055 exceeds the limit"),  # 4 GiB
    ],
    ids=["garbage", "oversized"],
)
async def test_row17_hostile_bytes_on_a_workers_result_pipe(
    start_method: str, junk: bytes, expected: str
) -> None:
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:
        other = pool.submit(tasks.square_slowly, 3, 0.5)
        with anyio.fail_after(10), pytest.raises(aioproc.SerializationError, match=expected):
            await pool.apply(tasks.corrupt_channel, junk)
        assert await other == 9
        await _healthy(pool, 2)


async def test_row17_truncated_frame_then_the_worker_dies(start_method: str) -> None:
    frame = bytearray()
    _wire.encode_into(_wire.Done(1, b"x" * 100), frame)
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        with anyio.fail_after(10), pytest.raises(aioproc.WorkerDiedError):
            await pool.apply(tasks.corrupt_channel, bytes(frame[:40]), True)
        await _healthy(pool, 1)


async def test_row17_wrong_type_on_a_typed_queue(start_method: str) -> None:
    q = aioproc.Queue(type=list[int])
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        await pool.apply(tasks.put_all, q, [[1, 2], ["three"], [4]])
        assert await q.get() == [1, 2]
        expected = r"Expected `int`, got `str` - at `\$\[0\]`"
        with pytest.raises(aioproc.ValidationError, match=expected):
            await q.get()
        assert await q.get() == [4]  # the channel goes on
        await _healthy(pool, 1)
