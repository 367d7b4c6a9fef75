"""The real-server benchmark's pieces (``benchmarks/server.py``), without wrk or a real port.

The figures themselves need wrk and a minute per strategy (``python -m benchmarks.server``);
here the app answers as the driver expects, and the driver refuses clearly without wrk.
Needs the ``bench`` extra (Starlette, httpx2).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")  # what starlette.testclient uses

from benchmarks import _server_app, _server_tasks, server
from starlette.testclient import TestClient


def test_app_offloads_to_aioproc_workers_and_counts(tmp_path: Path) -> None:
    counter = tmp_path / "abandoned.log"
    app = _server_app.build_app(
        "aioproc", workers=1, iterations=1_000, abandon_iterations=1_000, counter_path=str(counter)
    )
    with TestClient(app) as client:
        health = client.get("/health")
        cpu = client.get("/cpu")
        abandon = client.get("/abandon")
        stats = client.get("/stats").json()
    assert (health.status_code, health.text) == (200, "ok")
    assert cpu.status_code == 200
    worker = int(cpu.text)
    assert worker != os.getpid()  # the work ran in a worker, which answered with its pid
    assert abandon.status_code == 200
    assert _server_tasks.count_records(str(counter)) == (1, 1)
    assert stats["cpu"] == {
        "started": 1,
        "ok": 1,
        "failed": 0,
        "cancelled": 0,
        "pending": 0,
        "failures": {},
    }
    assert stats["abandon"]["ok"] == 1


def test_a_killed_task_leaves_a_start_without_an_end(tmp_path: Path) -> None:
    counter = tmp_path / "records.log"
    _server_tasks._append(str(counter), f"S {os.getpid()}\n")  # as a task killed mid-way
    _server_tasks.counted_task(1_000, str(counter))
    assert _server_tasks.count_records(str(counter)) == (2, 1)
    assert _server_tasks.count_records(str(tmp_path / "none.log")) == (0, 0)


def test_driver_without_wrk_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert server.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "needs wrk" in err
    assert "apt-get install -y wrk" in err
    assert "--python-loadgen" in err


def test_tree_pss_counts_this_process() -> None:
    mib, processes = server.tree_pss(os.getpid())
    assert processes >= 1
    assert mib > 1.0
