"""IPC objects: async in the event loop, blocking in children, passed to pool tasks."""

from __future__ import annotations

import queue
from collections import Counter
from pathlib import Path

import anyio
import msgspec
import pytest

import aioproc
from tests import tasks

pytestmark = pytest.mark.anyio


class Point(msgspec.Struct):
    x: int
    y: int


# --- Queue --------------------------------------------------------------------------------


async def test_queue_in_one_process() -> None:
    q: aioproc.Queue[int] = aioproc.Queue()
    for i in range(5):
        await q.put(i)
    q.put_nowait(5)
    assert q.qsize() == 6
    assert not q.empty()
    assert [await q.get() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert q.get_nowait() == 5
    with pytest.raises(aioproc.WouldBlock):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get_nowait()


async def test_bounded_queue_backpressure() -> None:
    q: aioproc.Queue[int] = aioproc.Queue(maxsize=2)
    await q.put(1)
    await q.put(2)
    assert q.full()
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with anyio.move_on_after(0.1) as scope:
        await q.put(3)
    assert scope.cancelled_caught
    assert q.qsize() == 2  # the cancelled put added nothing
    assert await q.get() == 1
    await q.put(3)
    assert [await q.get(), await q.get()] == [2, 3]


async def test_cancelled_get_loses_nothing() -> None:
    q: aioproc.Queue[str] = aioproc.Queue()
    with anyio.move_on_after(0.05):
        await q.get()
    await q.put("kept")
    assert await q.get() == "kept"


async def test_close_then_drain() -> None:
    q: aioproc.Queue[int] = aioproc.Queue()
    for i in range(3):
        await q.put(i)
    q.close()
    with pytest.raises(aioproc.ClosedResourceError):
        await q.put(9)
    assert [x async for x in q] == [0, 1, 2]
    with pytest.raises(aioproc.EndOfStream):
        await q.get()
    assert q.statistics().closed


async def test_two_producers_one_queue(start_method: str) -> None:
    numbers = range(1, 6)
    q: aioproc.Queue[int] = aioproc.Queue()
    async with aioproc.ProcessPool(2, start_method=start_method) as pool:
        await pool.map(tasks.drain, [], chunksize=1)
        p1 = pool.submit(tasks.square_numbers, numbers, q)
        p2 = pool.submit(tasks.cube_numbers, numbers, q)
        await p1
        await p2
        results = [await q.get() for _ in range(10)]
    assert Counter(results) == Counter([1, 1, 4, 8, 9, 27, 16, 64, 25, 125])


async def test_fifo_per_producer_across_processes() -> None:
    q: aioproc.Queue[int] = aioproc.Queue()
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.put_all, q, list(range(2000))) == 2000
        assert [await q.get() for _ in range(2000)] == list(range(2000))


async def test_puts_of_a_finished_task_precede_a_close() -> None:
    async with aioproc.ProcessPool(2) as pool:
        for _ in range(10):
            q: aioproc.Queue[int] = aioproc.Queue()
            await pool.apply(tasks.put_all, q, list(range(300)))
            q.close()  # right after the result: every put must be in already
            assert [x async for x in q] == list(range(300))


async def test_cancelled_async_get_in_a_worker_loses_nothing() -> None:
    q: aioproc.Queue[str] = aioproc.Queue()
    async with aioproc.ProcessPool(1, concurrency=2) as pool:
        # The worker's first get is cancelled; its second gets the worker's own marker.
        assert await pool.apply(tasks.cancelled_get_then_get, q) == "marker-from-worker"
        await q.put("after")
        assert await q.get() == "after"
        assert q.statistics().waiting_getters == 0


# --- Queue: consumers in other processes (prefetch: items lent in batches) -----------------


async def test_child_consumers_get_every_item_once_in_order_then_end_of_stream() -> None:
    n = 3000
    q: aioproc.Queue[int] = aioproc.Queue()
    async with aioproc.ProcessPool(2, concurrency=2) as pool:
        blocking = pool.submit(tasks.drain, q)
        awaiting = pool.submit(tasks.take_async, q)
        for i in range(n):
            await q.put(i)
        q.close()
        got = [await blocking, await awaiting]
    for each in got:
        assert each == sorted(each)  # FIFO as each consumer sees it
    assert sorted(got[0] + got[1]) == list(range(n))  # every item, once
    assert q.qsize() == 0


async def test_a_consumer_killed_with_a_prefetch_buffer_loses_nothing() -> None:
    n, taken = 1000, 100
    q: aioproc.Queue[int] = aioproc.Queue()
    for i in range(n):
        await q.put(i)
    async with aioproc.ProcessPool(1) as pool:
        with pytest.raises(aioproc.WorkerDiedError):
            await pool.apply(tasks.take_then_die, q, taken)
        # Once the hub saw the connection go, what was lent to the dead consumer is back at
        # the front, in order: items it had handed out but not yet settled come again (at
        # least once); none it had not handed out is missing.
        with anyio.fail_after(10):
            while q.statistics().prefetched:
                await anyio.sleep(0.01)
        rest = await pool.apply(tasks.take, q, q.qsize())
    assert rest[-1] == n - 1
    assert rest == list(range(rest[0], n))
    assert rest[0] <= taken
    assert q.qsize() == 0


async def test_a_finished_task_gives_back_what_it_prefetched() -> None:
    n, taken = 1000, 300
    q: aioproc.Queue[int] = aioproc.Queue()
    for i in range(n):
        await q.put(i)
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.take, q, taken) == list(range(taken))
        # Its result arrived after its buffer was given back and its gets settled.
        assert q.qsize() == n - taken
        assert [await q.get() for _ in range(n - taken)] == list(range(taken, n))


async def test_a_slow_consumer_leaves_the_rest_to_another() -> None:
    n, slow_takes = 40, 5
    q: aioproc.Queue[int] = aioproc.Queue()
    taken, go = aioproc.Event(), aioproc.Event()
    for i in range(n):
        await q.put(i)
    async with aioproc.ProcessPool(2) as pool:
        slow = pool.submit(tasks.take_slowly_then_wait, q, slow_takes, 0.02, taken, go)
        await taken.wait()
        # The slow consumer (20 ms per item) asked for one item at a time: it holds
        # nothing now, and a second consumer process takes all the rest at once.
        assert q.qsize() == n - slow_takes
        fast = await pool.apply(tasks.take, q, n - slow_takes)
        go.set()
        assert await slow == list(range(slow_takes))
    assert fast == list(range(slow_takes, n))


async def test_size_counts_what_a_consumer_has_not_taken() -> None:
    q: aioproc.Queue[int] = aioproc.Queue()
    started = aioproc.Event()
    async with aioproc.ProcessPool(1) as pool:
        waiting = pool.submit(tasks.wait_then_size, q, started)
        await started.wait()
        with anyio.fail_after(10):
            while q.statistics().waiting_getters != 1:
                await anyio.sleep(0.01)
        assert q.qsize() == 0 and q.empty()
        await q.put(7)
        assert await waiting == 7
        assert q.qsize() == 0


async def test_a_bounded_queue_keeps_its_backpressure_with_a_child_consumer() -> None:
    q: aioproc.Queue[int] = aioproc.Queue(maxsize=3)
    async with aioproc.ProcessPool(1) as pool:
        consumer = pool.submit(tasks.take, q, 200)
        for i in range(200):
            await q.put(i)
            assert q.qsize() <= 3
        assert await consumer == list(range(200))
    assert q.qsize() == 0


async def test_typed_pipe() -> None:
    a, b = aioproc.Pipe(type=Point)
    await a.send(Point(1, 2))
    await a.send({"x": 1, "y": "two"})  # type: ignore[arg-type]
    assert await b.recv() == Point(1, 2)
    with pytest.raises(aioproc.ValidationError, match=r"at `\$.y`"):
        await b.recv()


async def test_consumer_in_a_worker_and_close() -> None:
    q: aioproc.Queue[int] = aioproc.Queue(maxsize=3)
    async with aioproc.ProcessPool(1) as pool:
        consumer = pool.submit(tasks.drain, q)
        for i in range(20):
            await q.put(i)
        q.close()
        assert await consumer == list(range(20))


async def test_worker_get_timeout_loses_nothing() -> None:
    q: aioproc.Queue[str] = aioproc.Queue()
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.get_with_timeout, q, 0.1) == "timeout"
        await q.put("later")
        assert await pool.apply(tasks.get_with_timeout, q, 10) == "later"


async def test_async_get_in_a_concurrent_worker() -> None:
    q: aioproc.Queue[int] = aioproc.Queue()
    async with aioproc.ProcessPool(1, concurrency=2) as pool:
        waiting = pool.submit(tasks.async_get, q)
        await q.put(42)
        assert await waiting == 42


async def test_typed_queue_validates_on_receive() -> None:
    q: aioproc.Queue[Point] = aioproc.Queue(type=Point)
    await q.put(Point(1, 2))
    await q.put({"x": "one", "y": 2})  # type: ignore[arg-type]
    await q.put(Point(3, 4))
    assert await q.get() == Point(1, 2)
    with pytest.raises(aioproc.ValidationError, match=r"Expected `int`, got `str` - at `\$.x`"):
        await q.get()
    assert await q.get() == Point(3, 4)


async def test_typed_queue_across_processes() -> None:
    q: aioproc.Queue[Point] = aioproc.Queue(type=Point)
    async with aioproc.ProcessPool(1) as pool:
        await pool.apply(tasks.put_all, q, [Point(1, 1), Point(2, 2)])
    assert [await q.get(), await q.get()] == [Point(1, 1), Point(2, 2)]


async def test_queue_through_a_queue() -> None:
    inbox: aioproc.Queue[aioproc.Queue[str]] = aioproc.Queue()
    outbox: aioproc.Queue[str] = aioproc.Queue()
    async with aioproc.ProcessPool(1) as pool:
        await inbox.put(outbox)
        assert await pool.apply(tasks.forward, inbox) == "ok"
    assert await outbox.get() == "through"


def test_bad_queue_arguments() -> None:
    with pytest.raises(ValueError, match="maxsize must be at least 0"):
        aioproc.Queue(-1)
    with pytest.raises(TypeError, match="maxsize must be an int"):
        aioproc.Queue(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="type must be a msgspec-supported type"):
        aioproc.Queue(type=object())


# --- Pipe ---------------------------------------------------------------------------------


async def test_pipe_between_processes(start_method: str) -> None:
    a, b = aioproc.Pipe()
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        await pool.apply(tasks.pipe_send_cube, b, 19)
        assert await a.recv() == 6859
        b.close()
    # The worker's handle went with the pool, ours is closed: the stream ends.
    assert [x async for x in a] == []


async def test_pipe_echo_and_end_of_stream() -> None:
    a, b = aioproc.Pipe()
    async with aioproc.ProcessPool(1) as pool:
        echo = pool.submit(tasks.pipe_echo, b)
        b.close()  # the worker holds its own handle on b
        for message in ["one", (2,), {"three": 3}]:
            await a.send(message)
            assert await a.recv() == ("echo", message)
        a.close()
        assert await echo == 3


async def test_pipe_end_of_stream_after_close() -> None:
    a, b = aioproc.Pipe()
    await a.send("last")
    a.close()
    assert await b.recv() == "last"
    with pytest.raises(aioproc.EndOfStream):
        await b.recv()
    with pytest.raises(aioproc.ClosedResourceError):
        await a.send("x")


async def test_simplex_pipe() -> None:
    reader, writer = aioproc.Pipe(duplex=False)
    await writer.send_bytes(b"abc")
    assert await reader.recv_bytes() == b"abc"
    with pytest.raises(OSError, match="read-only"):
        await reader.send(1)


# --- Lock, Semaphore, Event, Condition, Barrier -----------------------------------------------


async def test_lock_in_one_process() -> None:
    lock = aioproc.Lock()
    async with lock:
        assert lock.locked()
        with pytest.raises(aioproc.WouldBlock):
            lock.acquire_nowait()
        with anyio.move_on_after(0.05) as scope:
            await lock.acquire()
        assert scope.cancelled_caught
    assert not lock.locked()  # the cancelled acquire holds nothing
    stats = lock.statistics()
    assert stats.locked is False
    assert stats.waiters == 0


async def test_lock_guards_a_counter_across_processes(tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    counter.write_text("0")
    lock = aioproc.Lock()
    async with aioproc.ProcessPool(4) as pool:
        await pool.starmap(tasks.increment_file, [(lock, str(counter), 100)] * 4, chunksize=1)
    assert counter.read_text() == "400"


async def test_lock_across_processes_and_statistics() -> None:
    lock = aioproc.Lock()
    release = aioproc.Event()
    async with aioproc.ProcessPool(2) as pool:
        async with lock:
            assert await pool.apply(tasks.try_lock, lock, 0.1) is False
        assert not lock.locked()  # the worker's timed-out acquire holds nothing
        holder = pool.submit(tasks.hold_lock_until, lock, release)
        with anyio.fail_after(10):
            while not lock.locked():
                await anyio.sleep(0.01)
        owner = lock.statistics().owner_pid
        release.set()
        assert await holder == owner
        assert await pool.apply(tasks.try_lock, lock, 5) is True


async def test_semaphores() -> None:
    sem = aioproc.Semaphore(2)
    await sem.acquire()
    await sem.acquire()
    with pytest.raises(aioproc.WouldBlock):
        sem.acquire_nowait()
    sem.release()
    assert sem.value == 1
    bounded = aioproc.BoundedSemaphore(1)
    with pytest.raises(ValueError, match="released too many times"):
        bounded.release()


async def test_event_across_processes() -> None:
    event = aioproc.Event()
    async with aioproc.ProcessPool(2) as pool:
        assert await pool.apply(tasks.wait_event, event, 0.05) is False
        waiter = pool.submit(tasks.wait_event, event, 30)
        event.set()
        assert await waiter is True
        event.clear()
        assert not event.is_set()
        setter = pool.submit(tasks.set_event, event)
        with anyio.fail_after(10):
            assert await event.wait() is True
        await setter


async def test_condition_notified_by_a_worker() -> None:
    cond = aioproc.Condition()
    flag: aioproc.Queue[str] = aioproc.Queue()
    async with aioproc.ProcessPool(1) as pool, cond:
        notifier = pool.submit(tasks.notify_after, cond, flag)
        with anyio.fail_after(10):
            await cond.wait_for(lambda: not flag.empty())
        assert await flag.get() == "ready"
        await notifier


async def test_barrier_with_workers() -> None:
    barrier = aioproc.Barrier(3)
    async with aioproc.ProcessPool(2) as pool:
        workers = [pool.submit(tasks.barrier_wait, barrier) for _ in range(2)]
        with anyio.fail_after(10):
            mine = await barrier.wait()
        indices = sorted([mine, await workers[0], await workers[1]])
    assert indices == [0, 1, 2]
    assert barrier.parties == 3


async def test_objects_created_in_a_worker_can_be_returned() -> None:
    async with aioproc.ProcessPool(1) as pool:  # no IPC object in this process yet
        q = await pool.apply(tasks.make_queue_with, "hello")
        assert await q.get() == "hello"


async def test_put_to_a_closed_queue_from_a_worker_is_reported_on_that_queue() -> None:
    closed: aioproc.Queue[int] = aioproc.Queue()
    closed.close()
    event = aioproc.Event()
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.put_twice_then_set, closed, event) == "ClosedResourceError"
    assert event.is_set()  # the failed put was not blamed on the event


async def test_condition_wait_without_the_lock_does_not_take_it() -> None:
    cond = aioproc.Condition()
    with pytest.raises(RuntimeError, match="un-acquired lock"):
        await cond.wait()
    with anyio.fail_after(5):
        async with cond:  # would deadlock if the failed wait had acquired the lock
            pass


def test_broken_barrier_error_is_an_aioproc_error() -> None:
    import threading

    assert issubclass(aioproc.BrokenBarrierError, aioproc.AioprocError)
    assert issubclass(aioproc.BrokenBarrierError, threading.BrokenBarrierError)
