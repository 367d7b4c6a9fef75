"""Workers never outlive their parent, their pool, or the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

from aioproc._core import _fds
from tests import procs

ROOT = Path(__file__).resolve().parents[1]


def test_an_unclosed_pool_ends_with_the_interpreter() -> None:
    done = subprocess.run(
        procs.script(
            """
            import asyncio, aioproc

            async def main():
                pool = aioproc.ProcessPool(2)
                print(await pool.apply(abs, -3))
                print(await aioproc.run(abs, -4))
                print(*pool.statistics().pids, flush=True)

            asyncio.run(main())
            """
        ),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["3", "4"]
    pids = [int(p) for p in lines[2].split()]
    assert procs.wait_gone(pids, 2.0) == []
    assert "Traceback" not in done.stderr


def test_scripts_need_no_main_guard_and_main_functions_work(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, aioproc
            from dataclasses import dataclass

            @dataclass
            class Point:
                x: int
                y: int

            def norm1(p):
                return Point(abs(p.x), abs(p.y))

            print("top level runs once")

            async def main():
                async with aioproc.ProcessPool(2, start_method="spawn") as pool:
                    back = await pool.apply(norm1, Point(-1, 2))
                    print(back == Point(1, 2), type(back) is Point)

            asyncio.run(main())
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["top level runs once", "True True"]


def test_forked_children_do_not_keep_aioproc_fds() -> None:
    r, w = os.pipe()
    _fds.register_fds(w)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.fstat(w)
            except OSError:
                os._exit(0)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        _fds.unregister_fds(w)
        os.close(r)
        os.close(w)


def test_a_forked_child_leaves_the_hub_of_its_parent_alone() -> None:
    from aioproc._core import _hub

    hub = _hub.local_hub()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        import gc

        gc.collect()
        os._exit(0)
    os.waitpid(pid, 0)
    # Still listening: the hub's name (abstract, "@..." in the kernel's table) is there.
    assert "@" + hub.address[1:] in Path("/proc/self/net/unix").read_text()
