"""Rows of the fault matrix (FAULTS.md) not covered elsewhere; more to come with issue 5."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import aioproc
from tests import procs, tasks

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


async def test_row5_argument_fails_to_rebuild_in_the_worker(start_method: str) -> None:
    async with aioproc.ProcessPool(1, start_method=start_method) as pool:
        with pytest.raises(aioproc.SerializationError, match="no rebuilding here"):
            await pool.apply(tasks.echo, tasks.FailsToLoad())
        with pytest.raises(aioproc.WorkerDiedError, match="exited with code 11"):
            await pool.apply(tasks.echo, tasks.ExitsWhileLoading())
        assert await pool.apply(tasks.double, 4) == 8


async def test_row13_collected_pool_resolves_every_awaiter() -> None:
    pool = aioproc.ProcessPool(1)
    await pool.__aenter__()
    running = pool.submit(tasks.sleep_forever)
    backlog = [pool.submit(tasks.double, i) for i in range(3)]
    del pool
    gc.collect()
    for task in [running, *backlog]:
        with anyio.fail_after(10), pytest.raises(aioproc.PoolClosedError):
            await task


def test_row12_one_ctrl_c_ends_the_program() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys, time, aioproc

        def slow(x):
            time.sleep(30)
            return x

        async def main():
            async with aioproc.ProcessPool(2) as pool:
                print(*pool.statistics().pids, flush=True)
                await pool.map(slow, range(8), chunksize=1)

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            sys.exit(130)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # its own process group, as a shell job would be
    )
    try:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]
        time.sleep(0.3)  # let map() start: the interrupt must land mid-map
        os.killpg(child.pid, signal.SIGINT)
        assert child.wait(timeout=2) == 130
        deadline = time.monotonic() + 2
        while any(procs.alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not [pid for pid in pids if procs.alive(pid)]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


async def test_row10_cancelling_running_tasks_many_times() -> None:
    async with aioproc.ProcessPool(2) as pool:
        await pool.apply(tasks.double, 1)
        baseline = len(procs.descendants())
        for _ in range(150):
            task = pool.submit(tasks.sleep_forever)
            await anyio.lowlevel.checkpoint()  # sent to a worker
            task.cancel()
        assert await pool.map(tasks.double, range(20)) == [2 * i for i in range(20)]
        stats = pool.statistics()
        assert stats.workers == 2
        assert stats.busy == 0
        # No process growth: killed workers are reaped as their replacements start.
        with anyio.fail_after(10):
            while len(procs.descendants()) > baseline:
                await anyio.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("anyio_backend", [("asyncio", {})])  # 6 GiB of copies: one loop
async def test_row15_payload_over_2_gib_round_trips(anyio_backend: object) -> None:
    size = 2**31 + 4096
    data = b"\x07" * size
    async with aioproc.ProcessPool(1) as pool:
        assert await pool.apply(tasks.describe_buffer, data) == ("bytes", size, None)
        del data
        with pytest.raises(aioproc.WorkerDiedError, match="SIGKILL"):
            await pool.apply(tasks.kill_self, signal.SIGKILL, b"\x01" * (64 << 20))
        assert await pool.apply(tasks.double, 2) == 4
