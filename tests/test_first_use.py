"""Defects of first real use (issue 9): stale callables, event loops, cancellation, the
Future protocol, closed and collected pools, argument checks."""

from __future__ import annotations

import asyncio
import functools
import gc
import math
import os
import sys
import traceback
import weakref
from typing import Any

import anyio
import pytest
import trio

import aioproc
from tests import procs, tasks

pytestmark = pytest.mark.anyio

ASYNCIO_ONLY = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ],
)


# --- 1. callables that carry state are sent with each call ---------------------------------


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def value(self) -> int:
        return self.n

    def __call__(self) -> int:
        return self.n


def read_cell(cell: list[int]) -> int:
    return cell[0]


def make_closure(cell: list[int]) -> Any:
    def read() -> int:
        return cell[0]

    return read


async def test_callables_with_state_are_never_stale() -> None:
    async with aioproc.ProcessPool(1) as pool:
        d = {"a": 1}
        assert await pool.apply(d.get, "a") == 1
        d["a"] = 2
        assert await pool.apply(d.get, "a") == 2

        items = [1]
        assert await pool.apply(items.copy) == [1]
        items.append(2)
        assert await pool.apply(items.copy) == [1, 2]

        counter = Counter()
        assert await pool.apply(counter.value) == 0
        assert await pool.apply(counter) == 0
        counter.n = 5
        assert await pool.apply(counter.value) == 5
        assert await pool.apply(counter) == 5

        cell = [1]
        partial = functools.partial(read_cell, cell)
        closure = make_closure(cell)
        assert await pool.apply(partial) == 1
        assert await pool.apply(closure) == 1
        cell[0] = 7
        assert await pool.apply(partial) == 7
        assert await pool.apply(closure) == 7
        lam = lambda _: cell[0]  # noqa: E731
        assert await pool.map(lam, [0, 1]) == [7, 7]
        cell[0] = 8
        assert await pool.map(lam, [0, 1]) == [8, 8]


async def test_the_pool_keeps_nothing_it_sent_alive() -> None:
    async with aioproc.ProcessPool(1) as pool:
        counter = Counter()
        d = {"a": 1}
        refs = [weakref.ref(counter)]
        assert await pool.apply(counter.value) == 0
        assert await pool.apply(counter) == 0
        assert await pool.apply(d.get, "a") == 1
        other = Counter()
        refs.append(weakref.ref(other))
        assert await pool.map(functools.partial(read_cell), [[other.n]]) == [0]
        assert await pool.starmap(Counter.value, [(other,)]) == [0]
        del other
        # A dict cannot be weakly referenced: count who refers to it instead.
        del counter
        gc.collect()
        assert all(ref() is None for ref in refs)
        assert sys.getrefcount(d) == 2  # the local name and getrefcount's argument


async def test_module_level_functions_are_still_sent_once() -> None:
    async with aioproc.ProcessPool(1) as pool:
        assert [await pool.apply(tasks.double, i) for i in range(3)] == [0, 2, 4]
        assert await pool.apply(math.floor, 2.5) == 2
        engine = pool._engine
        assert engine is not None
        # Each was pickled once: one id per function, whatever the number of calls.
        assert engine.function_id(tasks.double) == engine.function_id(tasks.double)
        assert engine.function_id(math.floor) == engine.function_id(math.floor)


# --- 5. a pool used from another event loop ------------------------------------------------


def test_a_pool_used_from_a_second_asyncio_loop() -> None:
    pool = aioproc.ProcessPool(1)
    loops: list[str] = []

    async def first() -> list[int]:
        await pool.__aenter__()
        assert await pool.apply(tasks.double, 2) == 4
        return list(pool.statistics().pids)

    pids = asyncio.run(first())
    # The loop closed with the pool open: its workers went with it.
    assert procs.wait_gone(pids, 5.0) == []
    assert pool.statistics().workers == 0

    async def second() -> None:
        loops.append(repr(asyncio.get_running_loop()))
        await pool.apply(tasks.double, 3)

    with pytest.raises(RuntimeError, match="another event loop") as info:
        asyncio.run(second())
    message = str(info.value)
    assert "closed=True" in message and loops[0] in message, message
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(second())
    asyncio.run(pool.aclose())  # closing is allowed from anywhere once its loop is gone


def test_a_pool_used_from_a_second_trio_run() -> None:
    pool = aioproc.ProcessPool(1)

    async def first() -> list[int]:
        await pool.__aenter__()
        assert await pool.apply(tasks.double, 2) == 4
        return list(pool.statistics().pids)

    pids = trio.run(first)
    assert procs.wait_gone(pids, 5.0) == []

    async def second() -> None:
        await pool.apply(tasks.double, 3)

    with pytest.raises(RuntimeError, match="another event loop"):
        trio.run(second)


def test_a_live_pool_used_from_a_loop_in_another_thread() -> None:
    import threading

    async def main() -> None:
        async with aioproc.ProcessPool(1) as pool:
            caught: list[BaseException] = []

            def elsewhere() -> None:
                try:
                    asyncio.run(pool.apply(tasks.double, 1))
                except BaseException as exc:
                    caught.append(exc)

            thread = threading.Thread(target=elsewhere)
            thread.start()
            await anyio.to_thread.run_sync(thread.join)
            assert len(caught) == 1 and isinstance(caught[0], RuntimeError), caught
            assert "another event loop" in str(caught[0])
            # The pool is unharmed for its own loop.
            assert await pool.apply(tasks.double, 5) == 10

    asyncio.run(main())


# --- 6. a call made where cancellation is already pending --------------------------------


async def test_a_call_in_a_cancelled_scope_never_reaches_a_worker(tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    async with aioproc.ProcessPool(1) as pool:
        pid = await pool.apply(tasks.pid)
        for call in ("apply", "map", "starmap"):
            with anyio.CancelScope() as scope:
                scope.cancel()
                if call == "apply":
                    await pool.apply(tasks.touch, str(marker))
                elif call == "map":
                    await pool.map(tasks.touch, [str(marker)])
                else:
                    await pool.starmap(tasks.touch, [(str(marker),)])
                pytest.fail("the call returned in a cancelled scope")
            assert scope.cancelled_caught
        async with pool.imap(tasks.touch, [str(marker)]) as results:
            with anyio.CancelScope() as scope:
                scope.cancel()
                async for _ in results:
                    pytest.fail("an item arrived in a cancelled scope")
        stats = pool.statistics()
        assert stats.restarts == 0
        assert stats.pids == (pid,)
        assert await pool.apply(tasks.pid) == pid
    assert not marker.exists()


@ASYNCIO_ONLY
async def test_a_call_after_task_cancel_never_reaches_a_worker(tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    async with aioproc.ProcessPool(1) as pool:
        await pool.apply(tasks.pid)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pool.apply(tasks.touch, str(marker))
        task.uncancel()
        assert pool.statistics().restarts == 0
    assert not marker.exists()


# --- 7. SystemExit or KeyboardInterrupt while a result is rebuilt -------------------------


def _exit_here(kind: str) -> None:
    if kind == "exit":
        sys.exit(3)
    raise KeyboardInterrupt


class ExitsWhenRebuilt:
    """Rebuilding this in the parent raises SystemExit (or KeyboardInterrupt)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> Any:
        return _exit_here, (self.kind,)


def make_exiting(kind: str) -> ExitsWhenRebuilt:
    return ExitsWhenRebuilt(kind)


@pytest.mark.parametrize("kind", ["exit", "interrupt"])
async def test_systemexit_while_rebuilding_a_result_fails_only_that_task(kind: str) -> None:
    async with aioproc.ProcessPool(1) as pool:
        with pytest.raises(aioproc.SerializationError, match="cannot rebuild the result") as info:
            await pool.apply(make_exiting, kind)
        assert isinstance(info.value.__cause__, SystemExit | KeyboardInterrupt)
        assert await pool.map(tasks.double, range(3)) == [0, 2, 4]
        assert pool.statistics().restarts == 0


def _exit_in(pid: int) -> Exception:
    if os.getpid() == pid:
        sys.exit(3)
    return ValueError("rebuilt in the worker")


class ErrorThatExitsInTheParent(Exception):
    """Rebuilds fine in the worker (which checks that it does), exits in the parent."""

    def __init__(self, parent: int) -> None:
        super().__init__(parent)
        self.parent = parent

    def __reduce__(self) -> Any:
        return _exit_in, (self.parent,)


def raise_exiting_error(parent: int) -> None:
    raise ErrorThatExitsInTheParent(parent)


async def test_systemexit_while_rebuilding_an_exception_fails_only_that_task() -> None:
    async with aioproc.ProcessPool(1) as pool:
        with pytest.raises(aioproc.SerializationError, match="remote exception") as info:
            await pool.apply(raise_exiting_error, os.getpid())
        assert isinstance(info.value.__cause__, SystemExit)
        assert await pool.apply(tasks.double, 4) == 8


# --- 8. each task of a broken pool gets its own exception ---------------------------------


async def test_each_task_of_a_broken_pool_gets_its_own_error() -> None:
    pool = aioproc.ProcessPool(1, initializer=tasks.failing_initializer)
    caught: list[BaseException] = []
    with pytest.raises(aioproc.PoolClosedError):
        async with pool:
            submitted = [pool.submit(tasks.double, i) for i in range(3)]
            for task in submitted:
                try:
                    await task
                except aioproc.WorkerDiedError as exc:
                    caught.append(exc)
            for _ in range(2):
                try:
                    await pool.apply(tasks.double, 1)
                except aioproc.AioprocError as exc:
                    caught.append(exc)
            pool.submit(tasks.double, 1)
    assert len(caught) == 5
    assert len({id(exc) for exc in caught}) == 5
    for exc in caught:
        assert isinstance(exc.__cause__, RuntimeError | aioproc.WorkerDiedError)
        here = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if frame.name == "test_each_task_of_a_broken_pool_gets_its_own_error"
        ]
        assert len(here) == 1, traceback.format_exception(exc)


async def test_awaiting_a_failed_task_again_does_not_grow_its_traceback() -> None:
    async with aioproc.ProcessPool(1) as pool:
        task = pool.submit(tasks.fail)
        depths = []
        for _ in range(3):
            with pytest.raises(ValueError, match="boom") as info:
                await task
            depths.append(len(traceback.extract_tb(info.value.__traceback__)))
        assert depths[0] == depths[1] == depths[2]


# --- 9. aioproc.Task is a Future for asyncio -----------------------------------------------


@ASYNCIO_ONLY
async def test_task_works_with_asyncio_wait_and_as_completed() -> None:
    async with aioproc.ProcessPool(2) as pool:
        slow = pool.submit(tasks.square_slowly, 3, 5.0)
        quick = pool.submit(tasks.double, 4)
        done, pending = await asyncio.wait([slow, quick], return_when=asyncio.FIRST_COMPLETED)
        assert done == {quick} and pending == {slow}
        assert quick.result() == 8
        assert slow.running() and not quick.running()
        assert slow.cancel()
        assert slow.cancelled()

        batch = [pool.submit(tasks.double, i) for i in range(5)]
        got = [await next_done for next_done in asyncio.as_completed(batch)]
        assert sorted(got) == [0, 2, 4, 6, 8]
        assert await asyncio.gather(*[pool.submit(tasks.double, i) for i in range(3)]) == [
            0,
            2,
            4,
        ]
        assert await asyncio.shield(pool.submit(tasks.double, 6)) == 12
        assert await asyncio.wait_for(pool.submit(tasks.double, 7), 30) == 14
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.submit(tasks.sleep_forever), 0.2)
        done, _ = await asyncio.wait([pool.submit(tasks.fail)])
        (failed,) = done
        assert isinstance(failed.exception(), ValueError)


@ASYNCIO_ONLY
async def test_task_done_callbacks_can_be_removed() -> None:
    async with aioproc.ProcessPool(1) as pool:
        seen: list[str] = []

        def first(_: Any) -> None:
            seen.append("first")

        def second(_: Any) -> None:
            seen.append("second")

        task = pool.submit(tasks.square_slowly, 2, 0.05)
        assert not task.running() or task.running()  # defined at every state
        task.add_done_callback(first)
        task.add_done_callback(second)
        task.add_done_callback(first)
        assert task.remove_done_callback(first) == 2
        assert task.remove_done_callback(first) == 0
        assert await task == 4
        await asyncio.sleep(0)
        assert seen == ["second"]
        assert not task.running()


@ASYNCIO_ONLY
async def test_gather_cancels_the_tasks_it_holds() -> None:
    async with aioproc.ProcessPool(1) as pool:
        running = pool.submit(tasks.sleep_forever)
        queued = pool.submit(tasks.double, 1)
        gathered = asyncio.gather(running, queued)
        await asyncio.sleep(0.1)
        gathered.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gathered
        assert running.cancelled() and queued.cancelled()
        assert await pool.apply(tasks.double, 2) == 4


# --- 10. entering a closed pool; a pool collected while open ------------------------------


async def test_entering_a_closed_pool_raises() -> None:
    pool = aioproc.ProcessPool(1)
    async with pool:
        assert await pool.apply(tasks.double, 1) == 2
    with pytest.raises(aioproc.PoolClosedError):
        async with pool:
            pytest.fail("entered a closed pool")

    never_started = aioproc.ProcessPool(1)
    await never_started.aclose()
    with pytest.raises(aioproc.PoolClosedError):
        await never_started.__aenter__()


async def test_a_pool_collected_while_open_warns_and_releases_its_workers() -> None:
    pool = aioproc.ProcessPool(1)
    await pool.__aenter__()
    pids = list(pool.statistics().pids)
    with pytest.warns(ResourceWarning, match="unclosed"):
        del pool  # the last reference: collected here
    assert procs.wait_gone(pids, 5.0) == []


# --- 15. arguments are checked, naming what was wrong -------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"task_timeout": "5"}, TypeError, "task_timeout must be a number"),
        ({"task_timeout": True}, TypeError, "task_timeout must be a number"),
        ({"task_timeout": -1}, ValueError, "task_timeout must be a positive number"),
        ({"task_timeout": math.inf}, ValueError, "task_timeout must be a positive number"),
        ({"task_timeout": math.nan}, ValueError, "task_timeout must be a positive number"),
        ({"initargs": 5}, TypeError, "initargs must be an iterable"),
        ({"initializer": 5}, TypeError, "initializer must be callable"),
        ({"max_workers": "2"}, TypeError, "max_workers must be an int"),
        ({"start_method": "thread"}, ValueError, "start_method"),
    ],
)
def test_bad_pool_options_name_the_parameter(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        aioproc.ProcessPool(**options)


async def test_an_array_larger_than_memory_is_refused() -> None:
    with pytest.raises(ValueError, match=r"needs 3\.6 TiB.*more than this machine's memory"):
        aioproc.Array("i", 10**12)
    with pytest.raises(ValueError, match="more than this machine's memory"):
        aioproc.Array("d", 2**62 // 8)


async def test_a_unicode_array_has_a_numpy_view() -> None:
    pytest.importorskip("numpy")
    arr = aioproc.Array("u", "abc")
    view = arr.numpy()
    assert view.tolist() == ["a", "b", "c"]
    view[1] = "z"  # the view shares the memory
    assert arr[:] == "azc"


async def test_map_results_are_freed_once_dropped_without_the_cycle_collector() -> None:
    np = pytest.importorskip("numpy")
    async with aioproc.ProcessPool(1) as pool:
        gc.disable()
        try:
            results = await pool.map(tasks.double_array, [np.ones(3), np.ones(4)])
            refs = [weakref.ref(r) for r in results]
            del results
            assert all(ref() is None for ref in refs)
        finally:
            gc.enable()
