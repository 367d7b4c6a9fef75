"""Start-up and memory (issue 11): what workers and the fork server load, and what they share.

Workers forked from one process share its memory until either side writes to it; these
tests hold the behaviours that keep the sharing: the fork server loads no more than a
worker needs to start, and a forked worker's cycle collector leaves the objects it
inherited alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import anyio
import pytest

import aioproc
from aioproc._core import _spawn
from tests import startup_tasks

pytestmark = pytest.mark.anyio

FORKED = pytest.mark.parametrize("method", ["forkserver", "fork"])


@pytest.fixture
def fresh_forkserver() -> Iterator[None]:
    """A fork server that no earlier test has used (it lives as long as the process)."""
    _spawn.shutdown_forkserver()
    yield
    _spawn.shutdown_forkserver()


def _maps(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


@pytest.mark.usefixtures("fresh_forkserver")
async def test_the_fork_server_of_a_running_pool_stays_lean() -> None:
    async with aioproc.ProcessPool(max_workers=2, start_method="forkserver") as pool:
        assert await pool.map(startup_tasks.loaded, ["asyncio", "asyncio"]) == [False, False]
        server = _spawn._forkserver
        assert server is not None
        # Idle time: a fork server that imports ahead while idle would do it now. What it
        # imports after forking this pool's workers is memory none of them shares.
        await anyio.sleep(0.2)
        maps = _maps(server.pid)
    assert [name for name in ("_asyncio", "uvloop") if name in maps] == []


@pytest.mark.usefixtures("fresh_forkserver")
async def test_workers_load_cloudpickle_only_for_a_function_sent_by_value() -> None:
    async with aioproc.ProcessPool(max_workers=1, start_method="forkserver") as pool:
        assert await pool.apply(startup_tasks.loaded, "cloudpickle") is False
        assert await pool.apply(lambda: "cloudpickle" in sys.modules) is True


@FORKED
@pytest.mark.usefixtures("fresh_forkserver")
async def test_a_forked_worker_leaves_the_objects_it_inherited_to_the_sharing(
    method: str,
) -> None:
    async with aioproc.ProcessPool(max_workers=1, start_method=method) as pool:
        assert await pool.apply(startup_tasks.freeze_count) > 0


@pytest.mark.usefixtures("fresh_forkserver")
async def test_fork_freezes_nothing_in_the_parent() -> None:
    async with aioproc.ProcessPool(max_workers=1, start_method="fork") as pool:
        await pool.apply(startup_tasks.freeze_count)
    import gc

    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("fresh_forkserver")
async def test_a_fork_server_asked_again_later_warms_up_for_the_forks_after() -> None:
    async with aioproc.ProcessPool(max_workers=1, start_method="forkserver") as pool:
        await pool.apply(startup_tasks.loaded, "asyncio")
        await anyio.sleep(0.5)  # longer than a burst: the next pool's request starts another
    async with aioproc.ProcessPool(max_workers=1, start_method="forkserver") as pool:
        await pool.apply(startup_tasks.loaded, "asyncio")
        server = _spawn._forkserver
        assert server is not None
        with anyio.fail_after(30):  # it warms up once idle
            while "_asyncio" not in _maps(server.pid):
                await anyio.sleep(0.01)
    async with aioproc.ProcessPool(max_workers=1, start_method="forkserver") as pool:
        assert await pool.apply(startup_tasks.loaded, "asyncio") is True
