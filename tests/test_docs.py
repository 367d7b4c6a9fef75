"""Every complete script in the documentation runs and exits cleanly.

A fenced ```python block counts as a complete script when it starts an event loop itself
(it contains ``asyncio.run(``, ``anyio.run(``, ``trio.run(`` or ``uvloop.run(``); other
blocks are fragments and are only read. Each script runs in a fresh interpreter, in a
temporary directory, and must exit with status 0. Every block that imports aioproc is
also type-checked, by ``python -m tests.typecheck`` (see tests/typecheck/__main__.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_MARKERS = ("asyncio.run(", "anyio.run(", "trio.run(", "uvloop.run(")
TIMEOUT = 120

# An opening fence (``` or ~~~, possibly indented), its info string, and the closing fence.
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


class Snippet(NamedTuple):
    path: Path
    number: int  # 1-based among the file's python blocks
    line: int  # line of the opening fence
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.number}"


def python_blocks(path: Path) -> list[Snippet]:
    """Every fenced block whose info string starts with ``python`` or ``py``."""
    blocks: list[Snippet] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening["fence"]
        language = opening["info"].split()[0].lower() if opening["info"].strip() else ""
        body: list[str] = []
        end = index + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(lines[end])
            end += 1
        if language in ("python", "py", "python3"):
            code = textwrap.dedent("\n".join(body)) + "\n"
            blocks.append(Snippet(path, len(blocks) + 1, index + 1, code))
        index = end + 1
    return blocks


def runnable(snippet: Snippet) -> bool:
    return any(marker in snippet.code for marker in RUN_MARKERS)


_IMPORTS_AIOPROC = re.compile(r"^(import aioproc\b|from aioproc\b)", re.MULTILINE)


def complete_program(snippet: Snippet) -> bool:
    """True for a block that imports aioproc: a whole program, as users would copy it.

    ``python -m tests.typecheck`` type-checks these; blocks without the import are
    signature summaries and fragments.
    """
    return _IMPORTS_AIOPROC.search(snippet.code) is not None


SNIPPETS = [s for path in DOCUMENTS if path.exists() for s in python_blocks(path) if runnable(s)]


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet_runs(snippet: Snippet, tmp_path: Path) -> None:
    script = tmp_path / f"{snippet.path.stem}_{snippet.number}.py"
    script.write_text(snippet.code, encoding="utf-8")
    try:
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{snippet.path.name} line {snippet.line}: still running after {TIMEOUT} s\n"
            f"--- stdout ---\n{exc.stdout}\n--- stderr ---\n{exc.stderr}"
        )
    assert done.returncode == 0, (
        f"{snippet.path.name} line {snippet.line} exited with {done.returncode}\n"
        f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"
    )


def test_every_runnable_snippet_is_type_checked() -> None:
    # A script that runs but escaped the type checks could show users code that fails theirs.
    unchecked = [s.id for s in SNIPPETS if not complete_program(s)]
    assert not unchecked, f"runnable snippets that do not import aioproc: {unchecked}"


def test_the_guides_have_runnable_snippets() -> None:
    found = {s.path.name for s in SNIPPETS}
    assert {"index.md", "pools.md"} <= found, f"no runnable snippet found in: {found}"


def test_fences_are_read_correctly(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n"
        "```python\nimport asyncio\nasyncio.run(main())\n```\n"
        "```bash\npython -c 'asyncio.run(x)'\n```\n"
        "  ```python\n  x = 1\n  ```\n"
        "````markdown\n```python\nnot a block of its own\n```\n````\n"
    )
    blocks = python_blocks(doc)
    assert [(b.number, b.line, b.code) for b in blocks] == [
        (1, 2, "import asyncio\nasyncio.run(main())\n"),
        (2, 9, "x = 1\n"),
    ]
    assert [runnable(b) for b in blocks] == [True, False]


def test_complete_programs_are_the_blocks_that_import_aioproc(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```python\nimport asyncio\nimport aioproc\n```\n"
        "```python\nfrom aioproc import ProcessPool\n```\n"
        "```python\naioproc.Queue(maxsize=0)\n```\n"
        "```python\nimport aioprocessing\n```\n"
    )
    assert [complete_program(b) for b in python_blocks(doc)] == [True, True, False, False]


# --- the distribution name (aioproc on the package index is another project) ---------------

DISTRIBUTION = "aioproc-parallel"
# "pip install" naming a package from the index: not a path ("."), not an option ("-e").
_PIP_INSTALL = re.compile(r"""pip\s+install\s+(?:--?[\w-]+\s+)*["']?(?P<name>[A-Za-z][\w.-]*)""")


def test_the_distribution_is_aioproc_parallel() -> None:
    import importlib.metadata
    import tomllib

    import aioproc

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == DISTRIBUTION
    assert importlib.metadata.version(DISTRIBUTION) == aioproc.__version__ == project["version"]


def test_install_commands_name_the_distribution() -> None:
    sources = [*DOCUMENTS, *sorted((ROOT / "src" / "aioproc").rglob("*.py"))]
    wrong = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for match in _PIP_INSTALL.finditer(text):  # a command may wrap onto the next line
            name = re.split(r"[\[<>=!~]", match["name"])[0]
            if name.startswith("aioproc") and name != DISTRIBUTION:
                number = text.count("\n", 0, match.start()) + 1
                wrong.append(f"{path.relative_to(ROOT)}:{number}: {match[0]}")
    assert not wrong, "install aioproc-parallel, not aioproc:\n" + "\n".join(wrong)


def test_the_readme_commands_do_what_they_say() -> None:
    # The first screen gives one command for the demo and one for the tests, and the test
    # command runs every check it names.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_screen = readme[: readme.index("\n## ")]
    assert "pip install . && python examples/pool_quickstart.py" in first_screen
    assert "\nbash .ci/run\n" in first_screen
    comment = first_screen[: first_screen.index("\nbash .ci/run\n")].rsplit("```bash", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for named, command in [
        ("ruff", "ruff check src tests benchmarks examples"),
        ("mypy", "\nmypy\n"),
        ("pyright", "python -m tests.typecheck"),
        ("pytest", "python -m pytest"),
    ]:
        assert named in comment, f"the README's test command does not mention {named}"
        assert command in ci, f".ci/run does not run {named}"
