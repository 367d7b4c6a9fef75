"""Every script in examples/ runs and prints what its tutorial promises."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pool_map() -> None:
    assert run_example("pool_map.py") == "Results: [2, 4, 6, 8, 10]\n"


def test_pool_errors() -> None:
    out = run_example("pool_errors.py").splitlines()
    assert out == ["Task 0 failed: ValueError: Invalid task value", "Output: [2, 4, 8, 10]"]


def test_pool_squares() -> None:
    out = run_example("pool_squares.py").splitlines()
    assert out == ["Squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]", "100"]


def test_quickstart() -> None:
    out = run_example("pool_quickstart.py", "--limit", "20000")
    assert "primes below 20000: 2262" in out
    assert "workers:" in out and "speed-up" in out
    # The heartbeat lines give their reference: how many were due in that time.
    blocked = next(line for line in out.splitlines() if "while this process computed" in line)
    assert "due (the loop was blocked)" in blocked
    pooled = next(line for line in out.splitlines() if "while the pool computed" in line)
    ticks, due = (int(word) for word in pooled.split(":")[1].split() if word.isdigit())
    assert 1 <= ticks <= due


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_a_test(script: str) -> None:
    tested = ast.parse(Path(__file__).read_text())
    names = {node.value for node in ast.walk(tested) if isinstance(node, ast.Constant)}
    assert script in names, f"examples/{script} is not exercised by a test"


def test_queue_producers() -> None:
    out = run_example("queue_producers.py").strip()
    assert out.startswith("Results: ")
    values = sorted(ast.literal_eval(out.removeprefix("Results: ")))
    assert values == sorted([1, 1, 4, 8, 9, 27, 16, 64, 25, 125])


def test_pipe_cube() -> None:
    assert run_example("pipe_cube.py") == "6859\n"


def test_queue_pipeline() -> None:
    assert run_example("queue_pipeline.py") == "[2, 9, 28, 65, 126, 217, 344, 513, 730, 1001]\n"


def test_lock_counter() -> None:
    assert run_example("lock_counter.py") == "Counter: 4000\n"


def test_process_basics() -> None:
    lines = run_example("process_basics.py").splitlines()
    main_pid = lines[0].removeprefix("Main process ID: ")
    workers = sorted(lines[1:3])
    assert workers[0].startswith("Worker Alice: My process ID is ")
    assert workers[1].startswith("Worker Bob: My process ID is ")
    pids = {line.rsplit(" ", 1)[1] for line in workers}
    assert len(pids) == 2
    assert main_pid not in pids
    assert lines[3] == "All worker processes finished."


def test_process_sleepers() -> None:
    lines = run_example("process_sleepers.py").splitlines()
    assert sorted(lines[:10]) == sorted(
        [f"Worker {i} started" for i in range(5)] + [f"Worker {i} finished" for i in range(5)]
    )
    # Each worker finishes after it starts; all of them before the parent's last line.
    for i in range(5):
        assert lines.index(f"Worker {i} started") < lines.index(f"Worker {i} finished")
    assert lines[10:] == ["All workers completed"]


def test_shared_value() -> None:
    assert run_example("shared_value.py") == "Value: 1\n"


def test_shared_array() -> None:
    assert run_example("shared_array.py") == "Number: 4\nArray: [16.0, 32.0, 48.0]\n"


def test_manager_list() -> None:
    assert run_example("manager_list.py") == "Shared List: ['New item']\n"
