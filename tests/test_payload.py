"""Large buffers travel through shared memory, both ways, intact and without leftovers."""

from __future__ import annotations

import gc
import os
import subprocess

import pytest

import aioproc
from aioproc._core import _payload
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
