"""What /proc says about processes: used by the leak guard and the lifecycle tests."""

from __future__ import annotations

import os
from pathlib import Path


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
