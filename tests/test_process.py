"""aioproc.Process: start, join, result, exit codes, signals, IPC objects as arguments."""

from __future__ import annotations

import gc
import os
import signal
from pathlib import Path

import anyio
import pytest

import aioproc
from tests import tasks

pytestmark = pytest.mark.anyio


async def test_start_join_result(start_method: str, capsys: pytest.CaptureFixture[str]) -> None:
    p = aioproc.Process(target=tasks.shout, args=("alice",), start_method=start_method)
    assert not p.is_alive()
    p.start()
    assert p.pid is not None
    assert p.pid != os.getpid()
    assert await p.result() == "ALICE"
    assert await p.join() == 0
    assert p.exitcode == 0
    assert not p.is_alive()
    assert "hello from alice\n" in capsys.readouterr().out


async def test_async_target_and_context_manager() -> None:
    async with aioproc.Process(target=tasks.async_double, args=(21,), name="doubler") as p:
        assert p.name == "doubler"
        assert await p.result() == 42
    assert p.exitcode == 0


async def test_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    failing = aioproc.Process(target=tasks.fail, args=("broken",))
    failing.start()
    assert await failing.join() == 1
    with pytest.raises(ValueError, match="broken"):
        await failing.result()
    assert "ValueError: broken" in capsys.readouterr().err  # as multiprocessing prints it

    exiting = aioproc.Process(target=tasks.sys_exit, args=(3,))
    exiting.start()
    assert await exiting.join() == 3

    dying = aioproc.Process(target=tasks.exit_with, args=(7,))
    dying.start()
    assert await dying.join() == 7
    with pytest.raises(aioproc.WorkerDiedError, match="exited with code 7"):
        await dying.result()


async def test_join_timeout_terminate_and_kill() -> None:
    p = aioproc.Process(target=tasks.sleep_forever)
    p.start()
    assert await p.join(timeout=0.1) is None
    assert p.is_alive()
    p.terminate()
    assert await p.join() == -signal.SIGTERM
    q = aioproc.Process(target=tasks.sleep_forever)
    q.start()
    q.kill()
    assert await q.join() == -signal.SIGKILL


async def test_cancelled_result_wait_leaves_the_process_running() -> None:
    p = aioproc.Process(target=tasks.sleep_then, args=("done", 0.3))
    p.start()
    with anyio.move_on_after(0.05):
        await p.result()
    assert await p.result() == "done"
    assert await p.join() == 0


async def test_ipc_objects_passed_to_a_process() -> None:
    q: aioproc.Queue[int] = aioproc.Queue()
    p = aioproc.Process(target=tasks.put_all, args=(q, [1, 2, 3]))
    p.start()
    assert await p.result() == 3
    assert [await q.get() for _ in range(3)] == [1, 2, 3]
    await p.join()


async def test_misuse_is_reported() -> None:
    with pytest.raises(TypeError, match="target must be callable"):
        aioproc.Process(target=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="start_method must be one of"):
        aioproc.Process(target=tasks.pid, start_method="thread")
    p = aioproc.Process(target=tasks.pid)
    with pytest.raises(RuntimeError, match="not started"):
        await p.join()
    p.start()
    with pytest.raises(RuntimeError, match="only be started once"):
        p.start()
    await p.join()


async def test_an_argument_that_cannot_be_sent_is_named_and_starts_nothing() -> None:
    import threading

    p = aioproc.Process(target=tasks.double, args=(threading.Lock(),))
    with pytest.raises(aioproc.SerializationError, match=r"argument 0 of type '_thread\.lock'"):
        p.start()
    assert p.pid is None and not p.is_alive()  # and the leak guard: no process, no fd


async def test_a_dropped_process_keeps_running(tmp_path: Path) -> None:
    from aioproc import _process

    marker = tmp_path / "done"
    aioproc.Process(target=tasks.sleep_then_touch, args=(str(marker), 0.2)).start()
    gc.collect()
    with anyio.fail_after(20):
        while not marker.exists() or _process._running:
            await anyio.sleep(0.02)
