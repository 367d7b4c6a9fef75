"""The import direction of the engine, and no import cycle anywhere in the package.

Every module of ``src/aioproc`` is parsed with ``ast``: imports at module level and inside
functions and classes both count (a function-level import is an edge like any other: it
only runs later). Imports under ``if TYPE_CHECKING:`` are skipped: they never run.

The rules:
- a module of ``aioproc._core`` imports only modules of lower layers of
  ``aioproc._core.LAYERS`` (and ``aioproc._exceptions``): no upward edge, no edge inside a
  layer, no public module;
- every module of ``aioproc._core`` is in ``LAYERS``;
- no import cycle among the modules of the package, public ones included.
"""

from __future__ import annotations

import ast
import pathlib
from typing import NamedTuple

import aioproc
from aioproc import _core

SRC = pathlib.Path(aioproc.__file__).parent
PACKAGE = "aioproc"
CORE = "aioproc._core"
ALLOWED_FROM_CORE = frozenset({"aioproc._exceptions"})


class Edge(NamedTuple):
    source: str  # the importing module
    target: str  # the imported module
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} -> {self.target}"


def discover(root: pathlib.Path = SRC) -> dict[str, tuple[str, str]]:
    """Every module of the package: its dotted name -> (file, source)."""
    modules = {}
    for file in sorted(root.rglob("*.py")):
        parts = list(file.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join([PACKAGE, *parts])
        modules[name] = (str(file), file.read_text(encoding="utf-8"))
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` but those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def edges(modules: dict[str, tuple[str, str]]) -> list[Edge]:
    """The imports of each module that name another module of the package."""
    packages = {name for name, (path, _) in modules.items() if path.endswith("__init__.py")}
    found = []
    for name, (path, source) in modules.items():
        here = name if name in packages else name.rpartition(".")[0]
        for node in _imports(ast.parse(source, path)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = here.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join([*base_parts, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    # `from pkg import mod` imports the module; `from mod import name`, mod.
                    targets.append(sub if sub in modules else base)
            for target in targets:
                if target in modules and target != name:
                    found.append(Edge(name, target, path, node.lineno))
    return found


def _layer_of(layers: tuple[tuple[str, ...], ...]) -> dict[str, int]:
    return {f"{CORE}.{short}": index for index, layer in enumerate(layers) for short in layer}


def layer_problems(
    modules: dict[str, tuple[str, str]], layers: tuple[tuple[str, ...], ...]
) -> list[str]:
    """What breaks the layer order of ``aioproc._core``."""
    layer = _layer_of(layers)
    problems = []
    for name, (path, _) in sorted(modules.items()):
        if name.startswith(f"{CORE}.") and name not in layer:
            problems.append(f"{path}: {name} is not in aioproc._core.LAYERS: add it")
    for edge in edges(modules):
        if not edge.source.startswith(f"{CORE}."):
            continue  # the public modules and the package itself may import the engine
        if edge.target == CORE or edge.target in ALLOWED_FROM_CORE:
            continue
        if not edge.target.startswith(f"{CORE}."):
            problems.append(f"{edge}: the engine imports a public module")
            continue
        source, target = layer.get(edge.source), layer.get(edge.target)
        if source is None or target is None:
            continue  # reported above as missing from LAYERS
        if target > source:
            problems.append(f"{edge}: an upward import (layer {source} imports layer {target})")
        elif target == source:
            problems.append(f"{edge}: an import inside one layer ({source})")
    return problems


def cycles(modules: dict[str, tuple[str, str]]) -> list[str]:
    """One cycle per strongly connected group of modules, each edge with its file and line."""
    graph: dict[str, dict[str, Edge]] = {name: {} for name in modules}
    for edge in edges(modules):
        graph[edge.source].setdefault(edge.target, edge)
    # Tarjan's algorithm, iterative.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(group)
    found = []
    for group in groups:
        members = set(group)
        # A shortest way back to the first module, through the group only.
        first = min(group)
        paths: dict[str, list[Edge]] = {first: []}
        queue = [first]
        closing: list[Edge] | None = None
        while queue and closing is None:
            node = queue.pop(0)
            for target, edge in sorted(graph[node].items()):
                if target == first:
                    closing = [*paths[node], edge]
                    break
                if target in members and target not in paths:
                    paths[target] = [*paths[node], edge]
                    queue.append(target)
        assert closing is not None
        found.append("an import cycle:\n    " + "\n    ".join(map(str, closing)))
    return found


# --- the package --------------------------------------------------------------------------


def test_the_engine_imports_only_downward() -> None:
    problems = layer_problems(discover(), _core.LAYERS)
    assert not problems, "\n".join(problems)


def test_no_import_cycle_in_the_package() -> None:
    found = cycles(discover())
    assert not found, "\n".join(found)


def test_each_module_is_in_one_layer() -> None:
    names = [name for layer in _core.LAYERS for name in layer]
    assert len(names) == len(set(names))


# --- the checker itself, on made-up sources -----------------------------------------------


def _fake(**sources: str) -> dict[str, tuple[str, str]]:
    modules = {
        PACKAGE: ("aioproc/__init__.py", ""),
        CORE: ("aioproc/_core/__init__.py", ""),
        "aioproc._exceptions": ("aioproc/_exceptions.py", ""),
    }
    for short, source in sources.items():
        name = short.replace("__", ".")
        path = "aioproc/" + name.replace(".", "/") + ".py"
        modules[f"{PACKAGE}.{name}"] = (path, source)
    return modules


_FAKE_LAYERS = (("_low",), ("_high",))


def test_checker_finds_an_upward_import_even_in_a_function() -> None:
    modules = _fake(
        _core___low="import os\n\ndef f():\n    from . import _high\n",
        _core___high="from . import _low\n",
    )
    problems = layer_problems(modules, _FAKE_LAYERS)
    assert problems == [
        "aioproc/_core/_low.py:4: aioproc._core._low -> aioproc._core._high:"
        " an upward import (layer 0 imports layer 1)"
    ]


def test_checker_skips_type_checking_imports_and_allows_exceptions() -> None:
    modules = _fake(
        _core___low=(
            "from typing import TYPE_CHECKING\n"
            "from .._exceptions import AioprocError\n"
            "if TYPE_CHECKING:\n"
            "    from ._high import X\n"
        ),
        _core___high="from ._low import Y\n",
    )
    assert layer_problems(modules, _FAKE_LAYERS) == []


def test_checker_finds_public_imports_unlisted_modules_and_same_layer_imports() -> None:
    modules = _fake(
        _pool="",
        _core___low="from .. import _pool\n",
        _core___high="from . import _other\n",
        _core___other="from ._high import Z\n",
    )
    problems = layer_problems(modules, (("_low",), ("_high", "_other")))
    assert problems == [
        "aioproc/_core/_low.py:1: aioproc._core._low -> aioproc._pool:"
        " the engine imports a public module",
        "aioproc/_core/_high.py:1: aioproc._core._high -> aioproc._core._other:"
        " an import inside one layer (1)",
        "aioproc/_core/_other.py:1: aioproc._core._other -> aioproc._core._high:"
        " an import inside one layer (1)",
    ]
    assert layer_problems(modules, (("_low",), ("_high",)))[0] == (
        "aioproc/_core/_other.py: aioproc._core._other is not in aioproc._core.LAYERS: add it"
    )


def test_checker_finds_a_cycle_through_public_modules() -> None:
    modules = _fake(
        _a="from ._b import x\n",
        _b="def f():\n    import aioproc._c\n",
        _c="from . import _a\n",
        _d="from . import _a\n",
    )
    assert cycles(modules) == [
        "an import cycle:\n"
        "    aioproc/_a.py:1: aioproc._a -> aioproc._b\n"
        "    aioproc/_b.py:2: aioproc._b -> aioproc._c\n"
        "    aioproc/_c.py:1: aioproc._c -> aioproc._a"
    ]
