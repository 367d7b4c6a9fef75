"""Large buffers travel through shared memory, both ways, intact and without leftovers."""

from __future__ import annotations

import os

import pytest

import aioproc
from aioproc._core import _codec
from tests import tasks

pytestmark = pytest.mark.anyio

BIG = 4 * _codec.OOB_THRESHOLD


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


async def test_process_arguments_and_no_leftovers() -> None:
    before = set(os.listdir("/dev/shm"))
    data = os.urandom(BIG)
    p = aioproc.Process(target=tasks.describe_buffer, args=(data,))
    p.start()
    assert await p.result() == ("bytes", BIG, None)
    await p.join()
    assert set(os.listdir("/dev/shm")) == before


async def test_small_values_stay_in_the_pipe() -> None:
    assert not _codec.has_big_buffers(((b"x" * 100,), None))
    assert _codec.has_big_buffers(((b"x" * BIG,), None))
    assert _codec.has_big_buffers(((1, [b"x" * BIG]), None))


async def test_large_bytearrays_travel_through_shared_memory() -> None:
    raw = bytearray(os.urandom(BIG))
    blob, release = _codec.dumps_maybe_large(((raw,), None))
    assert release is not None and len(blob) < 4096  # the bytes are not in the message
    release()
    async with aioproc.ProcessPool(1) as pool:
        back = await pool.apply(tasks.echo, raw)
        assert type(back) is bytearray and back == raw
        view = await pool.apply(tasks.echo, memoryview(raw))
        assert type(view) is memoryview and view == raw
