"""Process bookkeeping from /proc (Linux): descendants and their CPU time, no extra deps."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, `state`, comes first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:  # gone meanwhile
        return None
    # The command name is in parentheses and may itself contain spaces or parentheses.
    return raw[raw.rfind(b")") + 2 :].decode().split()


def descendants(root: int | None = None) -> list[int]:
    """Pids of every live descendant of `root` (default: this process), at any depth.

    A forkserver's workers are grandchildren of the process that asked for them, so a
    children-only scan would miss them.
    """
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process so far, or None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # utime and stime are fields 14 and 15 of the stat line, i.e. 11 and 12 after the name.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time burnt so far by this process and by each of its descendants.

    Descendants' times come from /proc in clock ticks (usually 10 ms), so short windows
    only resolve whole ticks; this process's own time is exact (`getrusage`).
    """

    own: float
    others: dict[int, float]

    @classmethod
    def take(cls, *, own_first: bool) -> CpuSnapshot:
        """Read the counters now.

        Args:
            own_first: Read this process's time before scanning /proc (for the snapshot that
                closes a window) or after (for the one that opens it), so the scan's own CPU
                cost stays outside the window.
        """
        if own_first:
            own = _own_cpu()
        others = {pid: t for pid in descendants() if (t := cpu_seconds(pid)) is not None}
        if not own_first:
            own = _own_cpu()
        return cls(own=own, others=others)

    def since(self, earlier: CpuSnapshot) -> tuple[float, float]:
        """CPU seconds burnt between `earlier` and this snapshot: (this process, descendants).

        A descendant born in between counts from zero; one that died in between is lost.
        """
        others = sum(t - earlier.others.get(pid, 0.0) for pid, t in self.others.items())
        return self.own - earlier.own, others


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux `PR_SET_CHILD_SUBREAPER`), so none can escape.

    Returns:
        Whether it worked; elsewhere, orphans of a benchmark child cannot be tracked.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # 36: PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def is_zombie(pid: int) -> bool:
    """Whether `pid` has exited and only waits to be reaped (or is gone)."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"


def live_descendants() -> list[int]:
    """Descendants that are still running (not zombies)."""
    return [pid for pid in descendants() if not is_zombie(pid)]


def settle(grace_s: float) -> list[int]:
    """Give exiting descendants up to `grace_s` to go; return those still running.

    Orphans are reaped on the way (they are ours once we are a subreaper).
    """
    stop = time.monotonic() + grace_s
    while True:
        _reap_adopted()
        alive = live_descendants()
        if not alive or time.monotonic() >= stop:
            return alive
        time.sleep(0.02)  # cleanup only, between benchmark children


def kill_descendants(deadline_s: float = 5.0) -> list[int]:
    """SIGKILL every live descendant of this process, by pid, and reap what we adopted.

    Returns:
        The pids that were still running (zombies waiting to be reaped do not count).
    """
    killed: list[int] = []
    stop = time.monotonic() + deadline_s
    while time.monotonic() < stop:
        alive = live_descendants()
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.extend(pid for pid in alive if pid not in killed)
        _reap_adopted()
        if not alive:
            break
        time.sleep(0.02)  # cleanup only: give the kernel a moment to deliver the signals
    return killed


def _reap_adopted() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def pipe_round_trip_us(cpus: tuple[int, int], rounds: int = 2_000) -> float:
    """Median blocking ping-pong over a pipe pair between two pinned processes (µs).

    The machine's own floor for waking another process, without any event loop: pinned to
    one CPU it costs two context switches; across CPUs it adds a cross-CPU wake-up, which on
    virtual machines can dominate every latency figure.

    Args:
        cpus: The CPU for this process and the one for the echoing child.
        rounds: Timed round trips, after a fifth as many untimed ones.
    """
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the echo child; it must never return into the caller's code
        try:
            os.sched_setaffinity(0, {cpus[1]})
            os.close(req_w)
            os.close(rep_r)
            while data := os.read(req_r, 8):
                os.write(rep_w, data)
        finally:
            os._exit(0)
    affinity = os.sched_getaffinity(0)
    os.close(req_r)
    os.close(rep_w)
    samples: list[int] = []
    try:
        os.sched_setaffinity(0, {cpus[0]})
        clock = time.perf_counter_ns
        for i in range(rounds + rounds // 5):
            t0 = clock()
            os.write(req_w, b"ping0000")
            os.read(rep_r, 8)
            if i >= rounds // 5:
                samples.append(clock() - t0)
    finally:
        os.sched_setaffinity(0, affinity)
        os.close(req_w)  # EOF ends the child
        os.close(rep_r)
        os.waitpid(pid, 0)
    samples.sort()
    return samples[len(samples) // 2] / 1e3


def parallel_speedup(cpus: list[int], task_s: float = 0.1, runs: int = 3) -> float:
    """Speed-up of bare forked processes burning CPU in parallel, one per CPU in `cpus`.

    The ceiling for the `scaling` figure on this machine: no pool, no messages, just whether
    the CPUs deliver their share (overcommitted or SMT-sibling vCPUs often do not).
    """
    from ._tasks import burn

    probe = 50_000
    t0 = time.perf_counter()
    burn(probe)
    n = max(1_000, int(probe * task_s / (time.perf_counter() - t0)))

    def alone() -> float:
        t0 = time.perf_counter()
        burn(n)
        return time.perf_counter() - t0

    def together() -> float:
        t0 = time.perf_counter()
        pids = []
        for cpu in cpus:
            pid = os.fork()
            if pid == 0:
                try:
                    os.sched_setaffinity(0, {cpu})
                    burn(n)
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        return time.perf_counter() - t0

    best_alone = min(alone() for _ in range(runs))
    best_together = min(together() for _ in range(runs))
    return len(cpus) * best_alone / best_together
