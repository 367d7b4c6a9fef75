"""Processes for the tests: what /proc says about them (used by the leak guard too), and
child interpreters running a script."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def live_processes() -> dict[int, list[str]]:
    """pid -> stat fields of every live process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields is not None and fields[0] != "Z":
                found[int(entry.name)] = fields
    return found


def descendants(of: int | None = None) -> set[int]:
    """Live descendants of ``of`` (default: this process)."""
    parents = {pid: int(fields[1]) for pid, fields in live_processes().items()}
    found: set[int] = set()
    frontier = {os.getpid() if of is None else of}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def group_alive(pgid: int) -> bool:
    """Is any live process in process group ``pgid``?"""
    return any(int(fields[2]) == pgid for fields in live_processes().values())


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """The pids whose process (or process group) is still alive after ``seconds``, or
    none as soon as all are gone."""
    deadline = time.monotonic() + seconds
    while True:
        left = [pid for pid in pids if alive(pid) or group_alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


def script(body: str, **values: Any) -> list[str]:
    """The command running ``body`` (dedented) in a fresh interpreter, each NAME in
    ``values`` replaced by the repr of its value."""
    code = textwrap.dedent(body)
    for name, value in values.items():
        code = code.replace(name, repr(value))
    return [sys.executable, "-c", code]


@contextlib.contextmanager
def child(command: list[str], **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """Run ``command`` with its stdout piped (text); kill and reap it if still running
    when the block ends."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def fds(pid: int | str = "self") -> dict[int, str]:
    """Every open fd of a process and what it refers to (``/proc/PID/fd``)."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed meanwhile (the fd of the listing itself, for one)
            pass
    return found


def memfds() -> int:
    """How many of aioproc's shared-memory blocks this process holds open."""
    return sum("memfd:aioproc" in target for target in fds().values())


def mapped_blocks(pid: int | str = "self") -> int:
    """How many blocks of aioproc's shared memory a process has mapped."""
    return Path(f"/proc/{pid}/maps").read_text().count("/memfd:aioproc")


def aioproc_shm() -> set[str]:
    """Entries of /dev/shm that carry aioproc's name (there should never be any)."""
    try:
        return {name for name in os.listdir("/dev/shm") if "aioproc" in name}
    except OSError:
        return set()
