"""Value and Array in shared memory: every process sees every write; nothing is left."""

from __future__ import annotations

import ctypes
import gc
import os

import pytest

import aioproc
from tests import procs, tasks

pytestmark = pytest.mark.anyio


async def test_value_written_by_a_child(start_method: str) -> None:
    v = aioproc.Value("i", 0)
    p = aioproc.Process(target=tasks.increment_value, args=(v,), start_method=start_method)
    p.start()
    assert await p.join() == 0
    assert v.value == 1


async def test_value_and_array_under_their_locks() -> None:
    num = aioproc.Value("i", 0)
    arr = aioproc.Array("d", [1.0, 2.0, 3.0])
    processes = [aioproc.Process(target=tasks.locked_double, args=(num, arr)) for _ in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        assert await p.join() == 0
    assert num.value == 4
    assert arr[:] == [16.0, 32.0, 48.0]


async def test_lock_makes_increments_exact() -> None:
    v = aioproc.Value("q", 0)
    async with aioproc.ProcessPool(2) as pool:
        await pool.starmap(tasks.many_increments, [(v, 200)] * 4, chunksize=1)
    assert v.value == 800


async def test_typecodes_ctypes_and_indexing() -> None:
    d = aioproc.Value("d", 1.5)
    assert d.value == 1.5
    s = aioproc.Value(ctypes.c_short, -3, lock=False)
    assert s.value == -3
    with pytest.raises(AttributeError, match="lock=False"):
        s.get_lock()
    a = aioproc.Array("i", 5)
    assert len(a) == 5
    assert list(a) == [0] * 5
    a[1:3] = [7, 8]
    a[-1] = 9
    assert a[:] == [0, 7, 8, 0, 9]
    assert a[2] == 8
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.array_sum, a) == 24.0


async def test_numpy_view_is_zero_copy() -> None:
    np = pytest.importorskip("numpy")
    a = aioproc.Array("d", 1000)
    view = a.numpy()
    view[:] = np.arange(1000)
    assert a[999] == 999.0
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.array_sum, a) == float(sum(range(1000)))


async def test_async_lock_of_a_value() -> None:
    v = aioproc.Value("i", 0)
    async with v.get_lock():
        v.value += 1
    assert v.value == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="typecode must be one of"):
        aioproc.Value("z", 0)
    with pytest.raises(TypeError, match="typecode must be a typecode string"):
        aioproc.Value(3.5, 0)
    with pytest.raises(ValueError, match="size must be at least 0"):
        aioproc.Array("i", -1)
    with pytest.raises(TypeError, match=r"lock must be True, False or an aioproc\.Lock"):
        aioproc.Value("i", 0, lock="yes")  # type: ignore[arg-type]


async def test_no_named_segment_and_memory_freed() -> None:
    gc.collect()
    before_shm = set(os.listdir("/dev/shm"))
    before = procs.memfds()
    shared = aioproc.Array("b", 1 << 20, lock=False)
    p = aioproc.Process(target=tasks.array_sum, args=(shared,))
    p.start()
    assert await p.join() == 0
    assert set(os.listdir("/dev/shm")) == before_shm  # memfd: no name that could leak
    local = aioproc.Value("i", 1, lock=False)
    assert procs.memfds() > before
    with_local = procs.memfds()
    mapped = procs.mapped_blocks()
    del local
    gc.collect()
    # The last handle of `local` is gone: the hub's descriptor and the mapping are closed.
    assert procs.memfds() <= with_local - 1
    assert procs.mapped_blocks() <= mapped - 1


async def test_values_and_arrays_hold_no_descriptor_of_their_own() -> None:
    gc.collect()
    before = procs.memfds()
    mapped = procs.mapped_blocks()
    kept = [aioproc.Value("i", i, lock=False) for i in range(20)]
    kept += [aioproc.Array("d", [float(i)] * 3, lock=False) for i in range(20)]
    # One descriptor per block, the hub's: mapping a block keeps none in this process.
    assert procs.memfds() - before == 40
    assert procs.mapped_blocks() - mapped == 40
    assert [v.value for v in kept[:20]] == list(range(20))
    del kept
    gc.collect()
    assert procs.memfds() == before
    assert procs.mapped_blocks() == mapped
