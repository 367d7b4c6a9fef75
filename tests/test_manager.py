"""Manager: shared dict, list and namespace, async in the parent, .sync in children."""

from __future__ import annotations

import pytest

import aioproc
from tests import tasks

pytestmark = pytest.mark.anyio


async def test_list_appended_by_a_child_under_a_lock(start_method: str) -> None:
    lock = aioproc.Lock()
    async with aioproc.Manager() as manager:
        shared = await manager.list()
        p = aioproc.Process(
            target=tasks.append_under_lock, args=(lock, shared), start_method=start_method
        )
        p.start()
        assert await p.join() == 0
        assert await shared.copy() == ["New item"]


async def test_dict_operations_and_errors_keep_their_type() -> None:
    async with aioproc.Manager() as m:
        d = await m.dict(a=1)
        await d.set("b", (2, 3))
        assert await d.get("b") == (2, 3)
        assert await d.get("zzz", "default") == "default"
        assert sorted(await d.items()) == [("a", 1), ("b", (2, 3))]
        assert await d.len() == 2
        assert await d.contains("a")
        with pytest.raises(KeyError):
            await d.delete("zzz")
        assert await d.pop("a") == 1
        copy = await d.copy()
        copy["b"] = "changed locally"
        assert await d.get("b") == (2, 3)  # a copy came back, not the shared object


async def test_list_and_namespace() -> None:
    async with aioproc.Manager() as m:
        items = await m.list([3, 1, 2])
        await items.append(4)
        await items.sort()
        assert await items.copy() == [1, 2, 3, 4]
        assert await items.get(0) == 1
        with pytest.raises(IndexError):
            await items.get(10)
        ns = await m.namespace(x=1)
        await ns.set("y", 2)
        assert await ns.get("x") == 1
        assert await ns.copy() == {"x": 1, "y": 2}
        with pytest.raises(AttributeError):
            await ns.get("nope")


async def test_sync_views_in_a_pool_task() -> None:
    async with aioproc.Manager() as m, aioproc.ProcessPool(1) as pool:
        d = await m.dict()
        ns = await m.namespace()
        assert await pool.apply(tasks.use_managed, d, ns) == "KeyError 'missing'"
        assert await d.get("from_child") == [1, 2]
        assert await ns.get("seen") is True


async def test_shut_down_manager() -> None:
    m = aioproc.Manager()
    d = await m.dict()
    m.shutdown()
    with pytest.raises(aioproc.ClosedResourceError):
        await d.get("x")
    with pytest.raises(aioproc.ClosedResourceError):
        await m.dict()
