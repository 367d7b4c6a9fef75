"""Type-check code as users write it: examples/, the docs' programs and check_types.py.

    python -m tests.typecheck      (from the project root; .ci/run runs it)

``mypy --strict`` and ``pyright`` (strict, configured in pyproject.toml) check:

- every script in ``examples/``;
- every complete program among the fenced ``python`` blocks of README.md and docs/*.md:
  a block that imports aioproc (the other blocks are signature summaries and fragments),
  written to a temporary directory as ``<page>_line<N>.py``, N being the line of its
  opening fence, so that an error at line L of that file is at line N + L of the page;
- ``tests/typecheck/check_types.py``, which pins the types inferred for the public API.

Exits with status 1 when either checker reports an error.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
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


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="aioproc-doc-programs-") as tmp:
        programs = write_doc_programs(Path(tmp))
        targets = [
            str(ROOT / "examples"),
            str(ROOT / "tests" / "typecheck" / "check_types.py"),
            *map(str, programs),
        ]
        print(f"type-checking examples/, check_types.py and {len(programs)} doc programs")
        commands = [
            [sys.executable, "-m", "mypy", "--strict", *targets],
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
