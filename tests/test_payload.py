"""Large buffers travel through shared memory, both ways, intact and without leftovers."""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
from typing import Any

import pytest

import aioproc
from aioproc._core import _hub, _objects, _payload
from tests import procs, tasks

pytestmark = pytest.mark.anyio

BIG = 4 * _payload.OOB_THRESHOLD


async def test_large_bytes_both_ways(start_method: str) -> None:
    data = os.urandom(BIG)
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        assert await pool.apply(tasks.describe_buffer, data) == ("bytes", BIG, None)
        back = await pool.apply(tasks.echo, data)
        assert back == data
        assert type(back) is bytes
        made = await pool.apply(tasks.make_bytes, BIG)
        assert made == bytes(range(256)) * (BIG // 256)


async def test_bytearray_memoryview_and_nested() -> None:
    raw = bytearray(os.urandom(BIG))
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.describe_buffer, raw) == ("bytearray", BIG, None)
        assert await pool.apply(tasks.describe_buffer, memoryview(raw)) == (
            "memoryview",
            BIG,
            None,
        )
        nested = {"payload": [bytes(raw)], "small": 1}
        assert await pool.apply(tasks.echo, nested) == nested


async def test_numpy_arrays_arrive_writable() -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(BIG // 8, dtype=np.float64)
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.describe_buffer, arr) == ("ndarray", BIG, True)
        doubled = await pool.apply(tasks.double_array, arr)
        assert np.array_equal(doubled, arr * 2)
        assert doubled.flags.writeable


async def test_large_results_hold_no_fd_and_are_freed_when_dropped() -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(BIG // 8, dtype=np.float64)
    mapped_before = procs.mapped_blocks()
    async with aioproc.ProcessPool(1) as pool:
        results = await pool.map(tasks.double_array, [arr + i for i in range(5)])
    # Each result is writable and shares its block (mapped, not copied), yet none keeps a
    # file descriptor open: a program can hold many more of them than its fd limit.
    assert all(np.array_equal(r, (arr + i) * 2) for i, r in enumerate(results))
    assert all(r.flags.writeable for r in results)
    assert procs.mapped_blocks() - mapped_before == 5
    assert procs.memfds() == 0
    results[0][:] = 7  # writable indeed, and the others are separate blocks
    assert np.array_equal(results[1], (arr + 1) * 2)
    del results
    gc.collect()  # the pool may keep its last batch of results in a cycle a little longer
    assert procs.mapped_blocks() == mapped_before  # the memory goes with the arrays


async def test_large_arguments_kept_by_a_worker_hold_no_fd() -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(BIG // 8, dtype=np.float64)
    async with aioproc.ProcessPool(1) as pool:
        pid = await pool.apply(tasks.pid)
        mapped_before = procs.mapped_blocks(pid)
        for i in range(5):
            await pool.apply(tasks.set_state, f"big{i}", arr)
        held = [target for target in procs.fds(pid).values() if "memfd:aioproc" in target]
        mapped = procs.mapped_blocks(pid) - mapped_before
        assert np.array_equal(await pool.apply(tasks.get_state, "big4"), arr)
        for i in range(5):
            await pool.apply(tasks.set_state, f"big{i}", None)
        mapped_after = procs.mapped_blocks(pid) - mapped_before
    assert held == []
    assert mapped == 5
    assert mapped_after == 0


def test_many_live_large_results_under_a_low_fd_limit() -> None:
    # More live 1 MiB arrays than the process may open files: all arrive, all correct.
    count, limit = 300, 128
    code = procs.script(
        """
        import asyncio, functools, gc, resource
        import numpy as np
        import aioproc

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_CAP, hard))

        def blocks():
            with open("/proc/self/maps") as maps:
                return maps.read().count("/memfd:aioproc")

        async def main():
            async with aioproc.ProcessPool(2) as pool:
                make = functools.partial(np.full, 131072)  # 1 MiB of float64
                results = await pool.map(make, [float(i) for i in range(N_RESULTS)])
            correct = all(
                r.shape == (131072,) and r.flags.writeable and (r == i).all()
                for i, r in enumerate(results)
            )
            alive = blocks()
            del results
            gc.collect()
            print(correct, alive, blocks(), flush=True)

        asyncio.run(main())
        """,
        FD_CAP=limit,
        N_RESULTS=count,
    )
    pytest.importorskip("numpy")
    done = subprocess.run(code, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", str(count), "0"]


async def test_process_arguments_and_no_leftovers() -> None:
    before = set(os.listdir("/dev/shm"))
    data = os.urandom(BIG)
    p = aioproc.Process(target=tasks.describe_buffer, args=(data,))
    p.start()
    assert await p.result() == ("bytes", BIG, None)
    await p.join()
    assert set(os.listdir("/dev/shm")) == before


async def test_small_values_stay_in_the_pipe() -> None:
    assert not _payload.has_big_buffers(((b"x" * 100,), None))
    assert _payload.has_big_buffers(((b"x" * BIG,), None))
    assert _payload.has_big_buffers(((1, [b"x" * BIG]), None))


async def test_large_bytearrays_travel_through_shared_memory() -> None:
    raw = bytearray(os.urandom(BIG))
    blob, release = _payload.dumps_maybe_large(((raw,), None))
    assert release is not None and len(blob) < 4096  # the bytes are not in the message
    release()
    async with aioproc.ProcessPool(1) as pool:
        back = await pool.apply(tasks.echo, raw)
        assert type(back) is bytearray and back == raw
        view = await pool.apply(tasks.echo, memoryview(raw))
        assert type(view) is memoryview and view == raw


# -- mapped, not copied ---------------------------------------------------------------------


@pytest.fixture
def blocks_made(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the blocks of shared memory created on this process's hub from now on
    (the workers create their results' blocks here too)."""
    made: list[int] = []
    create_from = _hub.Hub.create_from

    def counting(self: _hub.Hub, spec: bytes) -> list[int]:
        kind, params = pickle.loads(spec)
        if kind == "shm":
            made.append(params["size"])
        return create_from(self, spec)

    monkeypatch.setattr(_hub.Hub, "create_from", counting)
    return made


def _hub_blocks() -> int:
    hub = _hub.hosted()
    if hub is None:
        return 0
    return sum(type(s) is _objects.SharedMemoryState for s in hub.objects.values())


async def test_a_large_memoryview_arrives_mapped_read_only() -> None:
    data = os.urandom(BIG)
    async with aioproc.ProcessPool(1) as pool:
        kind, readonly, size, mapped = await pool.apply(tasks.describe_view, memoryview(data))
        # The worker's view is its mapping of the block: no copy, and read-only as sent.
        assert (kind, readonly, size) == ("memoryview", True, BIG)
        assert mapped >= 1
        mapped_before = procs.mapped_blocks()
        back = await pool.apply(tasks.view_of_bytes, BIG)
        expected = bytes(range(256)) * (BIG // 256)
        # What users do with bytes works on it, with no copy made on receipt.
        assert type(back) is memoryview and back.readonly
        assert back == expected and bytes(back) == expected and len(back) == BIG
        assert back[10:20] == expected[10:20]
        assert hash(back) == hash(expected)
        with pytest.raises(TypeError):
            back[0] = 1
        assert procs.mapped_blocks() - mapped_before == 1
        again = await pool.apply(tasks.describe_view, back)  # and it can be sent on
        assert again[:3] == ("memoryview", True, BIG)
        sliced = back[4096:]
        del back
        gc.collect()
        assert procs.mapped_blocks() - mapped_before == 1  # the slice holds the mapping
        del sliced
        gc.collect()
        assert procs.mapped_blocks() == mapped_before  # gone with its last view
    assert _hub_blocks() == 0


async def test_a_writable_memoryview_arrives_writable_and_private() -> None:
    raw = bytearray(os.urandom(BIG))
    async with aioproc.ProcessPool(1) as pool:
        kind, readonly, size, _ = await pool.apply(tasks.describe_view, memoryview(raw))
        assert (kind, readonly, size) == ("memoryview", False, BIG)
        back = await pool.apply(tasks.echo, memoryview(raw))
        assert type(back) is memoryview and not back.readonly and back == raw
        back[0] ^= 0xFF  # its own copy: the sender's buffer is untouched
        assert back[0] != raw[0]


async def test_read_only_numpy_arrays_arrive_mapped() -> None:
    np = pytest.importorskip("numpy")
    arr = np.frombuffer(os.urandom(BIG), dtype=np.uint8)
    assert not arr.flags.writeable
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.describe_buffer, arr) == ("ndarray", BIG, False)
        mapped_before = procs.mapped_blocks()
        back = await pool.apply(tasks.echo, arr)
        assert np.array_equal(back, arr) and not back.flags.writeable
        assert procs.mapped_blocks() - mapped_before == 1
        del back
        gc.collect()
        assert procs.mapped_blocks() == mapped_before


@pytest.mark.parametrize("kind", ["bytes", "memoryview"])
async def test_an_echoed_argument_crosses_back_without_a_new_block(
    kind: str, blocks_made: list[int]
) -> None:
    data = os.urandom(BIG)
    value = data if kind == "bytes" else memoryview(data)
    async with aioproc.ProcessPool(1) as pool:
        back = await pool.apply(tasks.echo, value)
        assert type(back) is type(value) and back == data
        # One block: the argument's, which the result refers to instead of a copy of it.
        assert blocks_made == [BIG]
        blocks_made.clear()
        part = await pool.apply(tasks.slice_of, memoryview(data), 12345, BIG - 999)
        assert part == data[12345 : BIG - 999]
        assert blocks_made == [BIG]
        blocks_made.clear()
        # Kept by the worker beyond its task, an argument is copied when sent later.
        await pool.apply(tasks.set_state, "kept", memoryview(data))
        assert await pool.apply(tasks.get_state, "kept") == data
        assert blocks_made == [BIG, BIG]
        await pool.apply(tasks.set_state, "kept", None)
        del back, part
        gc.collect()
    assert _hub_blocks() == 0


async def test_a_worker_dying_with_a_mapped_argument_leaves_nothing() -> None:
    data = os.urandom(BIG)
    async with aioproc.ProcessPool(1) as pool:
        with pytest.raises(aioproc.WorkerDiedError):
            await pool.apply(tasks.hold_and_die, memoryview(data))
        got = []
        with pytest.raises(aioproc.WorkerDiedError):
            async for item in pool.stream(tasks.yield_back_then_die, memoryview(data)):
                got.append(item)
        assert got == [data]  # the item that referred to its argument's block arrived
        del got
        gc.collect()
        assert await pool.apply(tasks.double, 2) == 4
    assert _hub_blocks() == 0


# -- shared buffers: no copy at all ---------------------------------------------------------


async def test_a_shared_buffer_crosses_with_no_copy_and_is_shared(blocks_made: list[int]) -> None:
    buf = aioproc.shared_buffer(BIG)
    assert blocks_made == [BIG] and type(buf) is memoryview and not buf.readonly
    buf[:] = b"\x01" * BIG
    async with aioproc.ProcessPool(1) as pool:
        kind, readonly, size, mapped = await pool.apply(tasks.describe_view, buf)
        assert (kind, readonly, size) == ("memoryview", False, BIG) and mapped >= 1
        await pool.apply(tasks.fill_view, buf[4096:], 7)  # a slice: by reference too
        assert buf[:4096] == b"\x01" * 4096 and buf[4096:] == b"\x07" * (BIG - 4096)
        back = await pool.apply(tasks.echo, buf)
        back[0] = 9  # the same memory, not a copy
        assert buf[0] == 9
        assert blocks_made == [BIG]  # only the buffer's own
        del back
        mapped_before = procs.mapped_blocks()
        made = await pool.apply(tasks.make_shared, BIG, 5)  # a worker's, returned
        assert made == b"\x05" * BIG and not made.readonly
        assert blocks_made == [BIG, BIG]
        assert procs.mapped_blocks() - mapped_before == 1
        del made
        gc.collect()
        assert procs.mapped_blocks() == mapped_before  # gone with its last view
        with pytest.raises(ValueError, match="at least"):
            aioproc.shared_buffer(1000)
    # The worker's handle went with the worker (or with its buffer): the caller's is left.
    assert _hub_blocks() == 1
    del buf
    gc.collect()
    assert _hub_blocks() == 0


async def test_numpy_arrays_over_a_shared_buffer_are_shared(blocks_made: list[int]) -> None:
    np = pytest.importorskip("numpy")
    arr = np.frombuffer(aioproc.shared_buffer(BIG), dtype=np.float64)
    arr[:] = np.arange(arr.size)
    async with aioproc.ProcessPool(1) as pool:
        doubled = await pool.apply(tasks.double_array, arr)  # doubles in place, returns it
    assert np.array_equal(arr, np.arange(arr.size) * 2)
    assert np.shares_memory(doubled, doubled) and np.array_equal(doubled, arr)
    doubled[0] = -1.0
    assert arr[0] == -1.0
    assert blocks_made == [BIG]
    del arr, doubled
    gc.collect()
    assert _hub_blocks() == 0


async def test_a_forked_child_copies_what_it_inherited_of_a_shared_buffer() -> None:
    buf = aioproc.shared_buffer(BIG)
    buf[:] = b"\x03" * BIG
    tasks.state["inherited"] = buf
    try:
        child: aioproc.Process[Any] = aioproc.Process(
            tasks.get_state, ("inherited",), start_method="fork"
        )
        async with child:
            back = await child.result()
    finally:
        del tasks.state["inherited"]
    assert back == b"\x03" * BIG
    buf[0] = 4  # the child sent a copy: it holds no handle on this block to lend
    assert back[0] == 3
    del buf, back
    gc.collect()
    assert _hub_blocks() == 0
