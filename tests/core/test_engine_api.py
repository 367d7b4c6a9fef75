"""The public layer reaches the engine only through its API.

``_pool.py`` and ``_process.py`` talk to ``_core._engine`` (``Engine``, job views,
``ProcessRun``) and ``_core._loop`` (the event-loop seam). Encoding, frames and the loops
themselves stay below: neither module imports ``_codec``, ``_wire``, ``_spawn``, asyncio or
trio at run time (imports for type checking only are fine).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import aioproc

SRC = Path(aioproc.__file__).parent
ENGINE_API = {"aioproc._core._engine", "aioproc._core._loop"}
FORBIDDEN = {"asyncio", "trio", "aioproc._core._codec", "aioproc._core._wire"}


def _runtime_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import outside ``if TYPE_CHECKING:``, relative ones resolved."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = "aioproc" if node.level == 1 else "aioproc.<up>"
                module = f"{base}.{node.module}" if node.module else base
                if node.module is None or module == "aioproc._core":
                    found += [(node.lineno, f"{module}.{a.name}") for a in node.names]
                    continue
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


@pytest.mark.parametrize("name", ["_pool.py", "_process.py"])
def test_the_public_layer_imports_only_the_engine_api(name: str) -> None:
    wrong = []
    for line, module in _runtime_imports(SRC / name):
        top = module.split(".")[0]
        if module.startswith("aioproc._core"):
            if module not in ENGINE_API:
                wrong.append(f"{name}:{line} imports {module}")
        elif module in FORBIDDEN or top in FORBIDDEN:
            wrong.append(f"{name}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "from ._core import _codec\n"
        "import asyncio\n"
        "if TYPE_CHECKING:\n"
        "    import trio\n"
        "def f():\n"
        "    from ._core._wire import Call\n"
    )
    assert sorted(_runtime_imports(sample)) == [
        (1, "typing"),
        (2, "aioproc._core._codec"),
        (3, "asyncio"),
        (7, "aioproc._core._wire"),
    ]
