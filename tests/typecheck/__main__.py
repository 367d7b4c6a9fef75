"""Type-check code as users write it: examples/, the docs' programs and check_types.py.

    python -m tests.typecheck      (from the project root; .ci/run runs it)

``mypy --strict`` and ``pyright`` (strict, configured in pyproject.toml) check:

- every script in ``examples/``;
- every complete program among the fenced ``python`` blocks of README.md and docs/*.md:
  a block that imports aioproc (the other blocks are signature summaries and fragments),
  written to ``build/doc-programs/<page>_line<N>.py``, N being the line of its opening
  fence, so that an error at line L of that file is at line N + L of the page (a fixed
  place, not a new temporary directory per run: mypy's cache names files by path);
- ``tests/typecheck/check_types.py``, which pins the types inferred for the public API.

Exits with status 1 when either checker reports an error.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.test_docs import DOCUMENTS, ROOT, complete_program, python_blocks


def write_doc_programs(directory: Path) -> list[Path]:
    """Write each complete program of the docs to ``directory``; return their paths."""
    paths = []
    for document in DOCUMENTS:
        for snippet in python_blocks(document):
            if not complete_program(snippet):
                continue
            stem = document.stem.replace("-", "_")
            path = directory / f"{stem}_line{snippet.line}.py"
            path.write_text(snippet.code, encoding="utf-8")
            paths.append(path)
    return paths


PROGRAMS = ROOT / "build" / "doc-programs"


def main() -> int:
    shutil.rmtree(PROGRAMS, ignore_errors=True)
    PROGRAMS.mkdir(parents=True)
    programs = write_doc_programs(PROGRAMS)
    targets = [
        "examples",
        "tests/typecheck/check_types.py",
        *(str(path.relative_to(ROOT)) for path in programs),
    ]
    print(f"type-checking examples/, check_types.py and {len(programs)} doc programs")
    commands = [
        # A cache of its own: these module names are not the project's.
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", "build/mypy-typecheck", *targets],
        [sys.executable, "-m", "pyright", "--pythonpath", sys.executable, *targets],
    ]
    failed = False
    for command in commands:
        print(f"== {command[2]}", flush=True)
        done = subprocess.run(command, cwd=ROOT, check=False)
        failed |= done.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
