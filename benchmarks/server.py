"""A real server: Starlette on uvicorn offloading CPU work, driven by wrk, per strategy.

Usage (from the project root)::

    python -m benchmarks.server [--quick] [--json PATH] [--strategy NAME,...]
                                [--rounds N] [--workers N] [--python-loadgen]

::

    driver (this process, a child subreaper)
      ├─ calibrate burn(n) ≈ 10 ms and ≈ 200 ms here
      └─ per round, per strategy (aioproc, ppe, anyio, aiomultiprocess, ...):
           bind 127.0.0.1:0 ──fd──▶ python -m benchmarks._server_app --strategy S   (own session)
                                      uvicorn + Starlette ──▶ the strategy's 2 workers
           wrk /cpu, 16 connections ─────────▶ saturation: req/s, server CPU per request, PSS
           wrk /cpu + wrk /health (1 conn.) ─▶ /health p50/p99 under that load
           20 clients hang up after 5 ms ────▶ /abandon: how many 200 ms tasks still ran
           wrk /cpu, SIGKILL one worker ─────▶ failed and never-answered requests, then
           wrk /cpu again ───────────────────▶ does it still serve?
           SIGTERM ─▶ graceful stop; whatever is left is counted, then killed

Every process the driver starts is its descendant (the driver adopts orphans as a child
subreaper), and is killed by pid when a strategy ends, on failure and on Ctrl-C or SIGTERM;
the server and the load generators also get SIGTERM/SIGKILL from the kernel if the driver
itself dies (``PR_SET_PDEATHSIG``).

Invariants:
    - Every strategy runs the same calibrated work, with the same number of workers, in the
      same run; rounds rotate the order so that none always goes first.
    - The server's CPU is its process only (all its threads: a peer's helper threads count),
      from /proc/<pid>/stat, between two idle points around the load; requests are the
      server's own count of /cpu responses in that window.
    - Memory is PSS summed over the server and every descendant (/proc/<pid>/smaps_rollup),
      so pages shared between them are counted once.
    - wrk is the load generator; without it the driver exits with code 2 and says how to
      install it, unless ``--python-loadgen`` asks for the (labelled) fallback.

Tunables:
    - `FULL` and `QUICK`: durations, connections, the number of impatient clients.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import _server_load
from ._proc import become_subreaper, cpu_seconds, descendants, kill_descendants, settle
from ._server_tasks import count_records
from ._tasks import burn

ROOT = Path(__file__).resolve().parent.parent
"""The project root (the directory holding `benchmarks/`)."""

SUBJECT = "aioproc"
DEFAULT_STRATEGIES = ("aioproc", "aioproc_cancel", "ppe", "anyio", "aiomultiprocess")
OURS = frozenset({"aioproc", "aioproc_cancel", "aioproc_run"})
"""aioproc's own variants: compared with the peers, never counted as one."""


@dataclass(frozen=True)
class Plan:
    """How long and how hard each phase drives the server.

    Attributes:
        warmup_s: /cpu load before anything is measured (workers started, code warm).
        saturate_s: Length of each saturation phase (alone, then with /health beside it).
        connections: wrk connections on /cpu: enough to keep both workers busy.
        health_delay_ms: Pause between /health requests on its one connection, so that the
            probe itself adds little load.
        idle_health_s: /health alone on the idle server: the latency floor.
        kill_s: /cpu load during which one worker is killed, at `kill_at_s`.
        after_s: /cpu load after the kill: does the server still serve?
        abandon_clients: Clients that hang up before the answer.
        abandon_wait_s: How long each waits for it.
        cpu_task_ms: Work per /cpu request, measured in the driver.
        abandon_task_ms: Work per /abandon request.
    """

    warmup_s: float
    saturate_s: float
    connections: int
    health_delay_ms: float
    idle_health_s: float
    kill_s: float
    kill_at_s: float
    after_s: float
    abandon_clients: int = 20
    abandon_wait_s: float = 0.005
    cpu_task_ms: float = 10.0
    abandon_task_ms: float = 200.0


FULL = Plan(
    warmup_s=3,
    saturate_s=10,
    connections=16,
    health_delay_ms=10,
    idle_health_s=3,
    kill_s=9,
    kill_at_s=3,
    after_s=5,
)
QUICK = Plan(
    warmup_s=1,
    saturate_s=3,
    connections=16,
    health_delay_ms=10,
    idle_health_s=1,
    kill_s=4,
    kill_at_s=1.5,
    after_s=2,
)

_READY_TIMEOUT_S = 60.0
_STOP_GRACE_S = 20.0
"""uvicorn's own graceful shutdown gives requests 5 s; the pools then close."""
_LOAD_TIMEOUT_S = 10.0
"""wrk's per-request timeout while nothing is killed: far above any queueing delay here."""
_KILL_TIMEOUT_S = 2.0
"""wrk's per-request timeout around the kill: a lost request shows up within the phase."""

# -- processes ------------------------------------------------------------------------------


def _set_death_signal(sig: int) -> None:
    # Runs in the child between fork and exec: the kernel signals it if the driver dies.
    ctypes.CDLL(None).prctl(1, int(sig), 0, 0, 0)  # 1: PR_SET_PDEATHSIG


def _spawn(cmd: list[str], *, death_signal: int, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd,
        start_new_session=True,  # Ctrl-C in the terminal reaches the driver only
        preexec_fn=lambda: _set_death_signal(death_signal),
        text=True,
        **kwargs,
    )


def _pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):  # gone meanwhile, or not readable
        return None
    return None


def tree_pss(root: int) -> tuple[float, int]:
    """PSS of `root` and all its descendants (MiB), and how many processes that is."""
    each = pss_by_process(root)
    return sum(mib for _, mib in each), len(each)


def pss_by_process(root: int) -> list[tuple[str, float]]:
    """(command line, PSS in MiB) of `root` and each of its descendants: where memory goes."""
    found = []
    for pid in (root, *descendants(root)):
        kib = _pss_kib(pid)
        if kib is not None:
            found.append((_command(pid)[:120], kib / 1024))
    return found


def _child_env() -> dict[str, str]:
    """This checkout importable, its `src/` first, in every process the driver starts."""
    paths = [str(ROOT)]
    if (ROOT / "src" / "aioproc").is_dir():
        paths.insert(0, str(ROOT / "src"))
    if existing := os.environ.get("PYTHONPATH"):
        paths.append(existing)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


# -- load -----------------------------------------------------------------------------------


class LoadGenerator:
    """Starts wrk (or the Python fallback) against the server and reads its result."""

    def __init__(self, wrk: str | None, workdir: Path, env: dict[str, str]) -> None:
        self.wrk = wrk
        self.name = "wrk" if wrk else "python (fallback: wrk is not installed)"
        self.env = env
        self.script = workdir / "report.lua"
        self.script.write_text(_server_load.WRK_SCRIPT)
        self.running: set[subprocess.Popen[str]] = set()

    def start(
        self,
        url: str,
        *,
        connections: int,
        duration_s: float,
        timeout_s: float,
        delay_ms: float = 0.0,
    ) -> tuple[subprocess.Popen[str], float]:
        """Start one load; returns the process and the time allowed for it to finish."""
        if self.wrk:
            cmd = _server_load.wrk_command(
                self.wrk,
                str(self.script),
                url,
                connections=connections,
                duration_s=duration_s,
                timeout_s=timeout_s,
            )
        else:
            cmd = _server_load.python_command(
                sys.executable,
                url,
                connections=connections,
                duration_s=duration_s,
                timeout_s=timeout_s,
                delay_ms=delay_ms,
            )
        env = {**self.env, _server_load.DELAY_ENV: str(delay_ms)}
        proc = _spawn(
            cmd,
            death_signal=signal.SIGKILL,
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.running.add(proc)
        return proc, duration_s + timeout_s + 30.0

    def finish(self, started: tuple[subprocess.Popen[str], float]) -> dict[str, Any]:
        """Wait for a load started with `start` and return its result."""
        proc, allowed = started
        try:
            out, _ = proc.communicate(timeout=allowed)
        finally:
            self._stop(proc)
        return _server_load.parse(out)

    def _stop(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self.running.discard(proc)

    def stop_all(self) -> None:
        """Kill the loads still running (a phase failed or was interrupted)."""
        for proc in list(self.running):
            self._stop(proc)

    def run(self, url: str, **kwargs: Any) -> dict[str, Any]:
        """`start` and `finish` in one."""
        return self.finish(self.start(url, **kwargs))


def _failed(result: dict[str, Any]) -> int:
    """Requests that failed as a client sees it: error statuses and socket errors."""
    return int(result["non2xx"] + result["connect"] + result["read"] + result["write"])


def _ok_rate(result: dict[str, Any]) -> float:
    return float(result["requests"] - result["non2xx"]) / float(result["duration_s"])


# -- the server under test ------------------------------------------------------------------


class Server:
    """One uvicorn process serving the benchmark app for one strategy."""

    def __init__(
        self,
        strategy: str,
        *,
        workers: int,
        iterations: int,
        abandon_iterations: int,
        loop: str,
        workdir: Path,
        env: dict[str, str],
    ) -> None:
        self.strategy = strategy
        self.counter = workdir / "abandoned.log"
        self.log = workdir / "server.log"
        self._args = [
            f"--strategy={strategy}",
            f"--workers={workers}",
            f"--iterations={iterations}",
            f"--abandon-iterations={abandon_iterations}",
            f"--counter={self.counter}",
            f"--loop={loop}",
        ]
        self._env = env
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> float:
        """Start the server; returns seconds until its first /cpu answer."""
        t0 = time.perf_counter()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            self.port = listener.getsockname()[1]
            fd = listener.fileno()
            with open(self.log, "w") as log:
                self.proc = _spawn(
                    [sys.executable, "-m", "benchmarks._server_app", f"--fd={fd}", *self._args],
                    death_signal=signal.SIGTERM,  # a graceful stop if the driver dies
                    pass_fds=(fd,),
                    env=self._env,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get("/cpu", timeout=5.0)[0] == 200:
                    return time.perf_counter() - t0
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within {_READY_TIMEOUT_S} s")
            time.sleep(0.02)  # polling for start-up only, outside every measurement

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """One request on a fresh connection: (status, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        status, body = self.get("/stats")
        if status != 200:
            raise RuntimeError(f"/stats answered {status}: {body}")
        result: dict[str, Any] = json.loads(body)
        return result

    def cpu_s(self) -> float:
        value = cpu_seconds(self.pid)
        if value is None:
            raise RuntimeError(f"the server exited:\n{self.tail()}")
        return value

    def wait_quiet(self, timeout_s: float) -> dict[str, Any]:
        """Wait until no request is in flight (or `timeout_s`); returns the last stats."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            pending = stats["cpu"]["pending"] + stats["abandon"]["pending"]
            if pending == 0 or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)  # between phases, not measured

    def wait_settled(self, timeout_s: float, stable_s: float = 1.0) -> dict[str, Any]:
        """Wait until the request counters stop moving for `stable_s` (or `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        last = self.stats()
        still_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)  # between phases, not measured
            now = self.stats()
            if (now["cpu"], now["abandon"]) != (last["cpu"], last["abandon"]):
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= stable_s:
                break
        return last

    def stop(self) -> float | None:
        """SIGTERM and wait; seconds it took, or None if it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        return time.perf_counter() - t0

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- the phases -----------------------------------------------------------------------------


def _hang_up(port: int, clients: int, wait_s: float) -> None:
    """`clients` requests to /abandon, each given up after `wait_s` without an answer."""
    socks = []
    try:
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
            socks.append(sock)
            sock.sendall(b"GET /abandon HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(wait_s)  # the clients' patience: part of the scenario, not a measurement
    finally:
        for sock in socks:
            sock.close()


def _pick_worker(server: Server) -> int:
    """The pid of one of the strategy's workers, as reported by the worker itself."""
    inside = set(descendants(server.pid))
    for _ in range(8):
        status, body = server.get("/cpu")
        if status == 200 and int(body) in inside:
            return int(body)
        inside = set(descendants(server.pid))
    raise RuntimeError("no /cpu answer came from a process of the server's tree")


def measure(server: Server, plan: Plan, gen: LoadGenerator) -> dict[str, Any]:
    """Every figure for one running server (see the module docstring for the phases)."""
    out: dict[str, Any] = {}
    cpu_url, health_url = server.url("/cpu"), server.url("/health")
    load: dict[str, Any] = {"connections": plan.connections, "timeout_s": _LOAD_TIMEOUT_S}

    gen.run(cpu_url, duration_s=plan.warmup_s, **load)
    server.wait_quiet(10.0)
    time.sleep(0.5)  # let the warm-up's garbage go before reading memory
    out["pss_idle_by_process"] = pss_by_process(server.pid)
    out["pss_idle_mib"] = sum(mib for _, mib in out["pss_idle_by_process"])
    out["processes_idle"] = len(out["pss_idle_by_process"])

    idle_health = gen.run(
        health_url,
        connections=1,
        duration_s=plan.idle_health_s,
        timeout_s=_LOAD_TIMEOUT_S,
        delay_ms=plan.health_delay_ms,
    )
    out["health_idle_p50_ms"] = idle_health["p50_ms"]
    out["health_idle_p99_ms"] = idle_health["p99_ms"]

    # Saturation alone: throughput, the server's own CPU per request, memory under load.
    server.wait_quiet(10.0)
    stats0, cpu0 = server.stats(), server.cpu_s()
    started = gen.start(cpu_url, duration_s=plan.saturate_s, **load)
    time.sleep(plan.saturate_s / 2)
    out["pss_load_mib"], out["processes_load"] = tree_pss(server.pid)
    saturated = gen.finish(started)
    server.wait_quiet(10.0)
    cpu1, stats1 = server.cpu_s(), server.stats()
    served = (stats1["cpu"]["ok"] + stats1["cpu"]["failed"]) - (
        stats0["cpu"]["ok"] + stats0["cpu"]["failed"]
    )
    out["cpu_rps"] = _ok_rate(saturated)
    out["cpu_failed"] = _failed(saturated)
    out["cpu_p50_ms"] = saturated["p50_ms"]
    out["cpu_p99_ms"] = saturated["p99_ms"]
    out["server_cpu_ms_per_request"] = (cpu1 - cpu0) * 1e3 / served if served else None
    out["loop"] = stats1["loop"]

    # Saturation with a light /health probe beside it.
    started = gen.start(cpu_url, duration_s=plan.saturate_s, **load)
    probe = gen.run(
        health_url,
        connections=1,
        duration_s=plan.saturate_s,
        timeout_s=_LOAD_TIMEOUT_S,
        delay_ms=plan.health_delay_ms,
    )
    beside = gen.finish(started)
    out["health_p50_ms"] = probe["p50_ms"]
    out["health_p99_ms"] = probe["p99_ms"]
    out["health_requests"] = probe["requests"]
    out["cpu_rps_with_probe"] = _ok_rate(beside)

    # Clients that hang up: how much of their work still runs?
    before = server.wait_quiet(10.0)["abandon"]
    _hang_up(server.port, plan.abandon_clients, plan.abandon_wait_s)
    # The tasks take clients x abandon_task_ms / workers when the machine is ours alone; on
    # a shared one ten times that, and the wait ends as soon as every handler has answered.
    budget = max(60.0, 10 * plan.abandon_clients * plan.abandon_task_ms / 1e3)
    # A handler answers (to nobody) when its task ends, or is cancelled: pending drops to
    # zero unless a task was lost, and then the budget ends the wait.
    after = server.wait_quiet(budget)["abandon"]
    tasks_started, tasks_done = count_records(str(server.counter))
    out["abandon_clients"] = plan.abandon_clients
    out["abandon_handlers"] = after["started"] - before["started"]
    out["abandon_tasks_started"] = tasks_started
    out["abandon_tasks_completed"] = tasks_done
    out["abandon_cancelled"] = after["cancelled"] - before["cancelled"]
    out["abandon_pending_at_end"] = after["pending"]

    # One worker SIGKILLed under load.
    server.wait_quiet(10.0)
    victim = _pick_worker(server)
    stats0 = server.stats()
    kill_load: dict[str, Any] = {"connections": plan.connections, "timeout_s": _KILL_TIMEOUT_S}
    started = gen.start(cpu_url, duration_s=plan.kill_s, **kill_load)
    time.sleep(plan.kill_at_s)
    out["kill_victim"] = _command(victim)
    os.kill(victim, signal.SIGKILL)
    during = gen.finish(started)
    stats1 = server.wait_settled(10.0)
    out["kill_failed"] = _failed(during)
    out["kill_server_failed"] = stats1["cpu"]["failed"] - stats0["cpu"]["failed"]
    out["kill_hung"] = stats1["cpu"]["pending"]
    out["kill_failures"] = stats1["cpu"]["failures"]
    out["kill_ok_rps"] = _ok_rate(during)
    out["kill_lost"] = out["kill_failed"] + out["kill_hung"]

    afterwards = gen.run(cpu_url, duration_s=plan.after_s, **kill_load)
    stats2 = server.wait_settled(10.0)
    out["after_ok_rps"] = _ok_rate(afterwards)
    out["after_failed"] = _failed(afterwards)
    out["after_hung"] = stats2["cpu"]["pending"] - stats1["cpu"]["pending"]
    out["after_lost"] = out["after_failed"] + out["after_hung"]
    out["processes_after"] = tree_pss(server.pid)[1]
    out["serving_after"] = out["after_ok_rps"] >= 0.5 * out["cpu_rps"]
    out["generator_timeouts"] = {
        "kill": during["timeout"],
        "after": afterwards["timeout"],
    }
    return out


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:  # gone meanwhile
        return "?"


def run_strategy(
    strategy: str,
    plan: Plan,
    gen: LoadGenerator,
    *,
    workers: int,
    iterations: int,
    abandon_iterations: int,
    loop: str,
    env: dict[str, str],
) -> dict[str, Any]:
    """Start the server for `strategy`, measure it, stop it, and clean up after it."""
    result: dict[str, Any] = {"strategy": strategy, "status": "ok"}
    with tempfile.TemporaryDirectory(prefix=f"aioproc-server-{strategy}-") as tmp:
        server = Server(
            strategy,
            workers=workers,
            iterations=iterations,
            abandon_iterations=abandon_iterations,
            loop=loop,
            workdir=Path(tmp),
            env=env,
        )
        try:
            result["first_response_s"] = server.start()
            result.update(measure(server, plan, gen))
        except (RuntimeError, OSError, ValueError, http.client.HTTPException) as exc:
            result["status"] = "error"
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["server_log"] = server.tail()
        finally:
            # Runs on Ctrl-C too: the server stops gracefully, then nothing may be left.
            gen.stop_all()
            result["shutdown_s"] = server.stop()
            left = settle(3.0)
            result["left_after_shutdown"] = len(left)
            result["left_commands"] = [_command(pid) for pid in left]
            kill_descendants()
    return result


# -- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    better: str | None  # "higher", "lower", or None (not compared)
    missing: str | None = None
    """What a round without a value means for this figure (said in the cell), if anything."""


ROWS = (
    Row("cpu_rps", "/cpu under saturation (req/s)", "higher"),
    Row("health_p50_ms", "/health p50 while /cpu is saturated (ms)", "lower"),
    Row("health_p99_ms", "/health p99 while /cpu is saturated (ms)", "lower"),
    Row("health_idle_p99_ms", "/health p99, server idle (ms; the floor)", None),
    Row("server_cpu_ms_per_request", "server process CPU per /cpu request (ms)", "lower"),
    Row("pss_idle_mib", "PSS of the process tree, idle (MiB)", "lower"),
    Row("pss_load_mib", "PSS of the process tree, under load (MiB)", "lower"),
    Row("processes_load", "processes in the tree", None),
    Row("kill_lost", "worker killed: requests failed or never answered", "lower"),
    Row("kill_hung", "... of which never answered", "lower"),
    Row("after_lost", "after the kill: requests failed or never answered", "lower"),
    Row("after_ok_rps", "after the kill: /cpu ok (req/s)", "higher"),
    Row("abandon_tasks_completed", "abandoned: tasks run to completion (of 20)", "lower"),
    Row("first_response_s", "start to first /cpu answer (s)", "lower"),
    Row("shutdown_s", "graceful shutdown (s)", "lower", missing="killed after 20 s"),
    Row("left_after_shutdown", "processes left after shutdown", "lower"),
)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _median(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not numbers:
        return values[0] if values else None
    median = statistics.median(numbers)
    if all(isinstance(v, int) for v in numbers) and float(median).is_integer():
        return int(median)
    return float(median)


def summarise(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per strategy and figure: the median over rounds, and the min and max."""
    summary: dict[str, dict[str, Any]] = {}
    strategies = list(dict.fromkeys(s for r in rounds for s in r))
    for strategy in strategies:
        results = [r[strategy] for r in rounds if r.get(strategy, {}).get("status") == "ok"]
        figures: dict[str, Any] = {}
        for row in ROWS:
            values = [r.get(row.key) for r in results if r.get(row.key) is not None]
            numeric = [v for v in values if isinstance(v, int | float)]
            figures[row.key] = {
                "rounds": len(results),
                "median": _median(values) if values else None,
                "min": min(numeric) if numeric else None,
                "max": max(numeric) if numeric else None,
                "values": values,
            }
        summary[strategy] = figures
    return summary


def _compare(row: Row, summary: dict[str, dict[str, Any]]) -> str:
    if row.better is None or SUBJECT not in summary:
        return ""
    ours = summary[SUBJECT][row.key]["median"]
    peers = {
        s: f[row.key]["median"]
        for s, f in summary.items()
        if s not in OURS and f[row.key]["median"] is not None
    }
    if ours is None or not peers:
        return "-"
    pick = max if row.better == "higher" else min
    best = pick(peers, key=lambda s: peers[s])
    theirs = peers[best]
    if ours == theirs:
        return f"same ({best})"
    if theirs == 0 or ours == 0:
        won = (ours > theirs) == (row.better == "higher")
        return f"{'better' if won else 'worse'} ({best}: {_fmt(theirs)})"
    ratio = ours / theirs if row.better == "higher" else theirs / ours
    word = "better" if ratio >= 1 else "worse"
    times = max(ratio, 1 / ratio)
    return f"{times:,.0f}x {word} ({best})" if times >= 100 else f"{times:.2f}x {word} ({best})"


def table(summary: dict[str, dict[str, Any]], *, spread: bool) -> str:
    """Markdown table: one row per figure, one column per strategy, aioproc vs the best peer."""
    strategies = list(summary)
    header = ["figure", *strategies, "aioproc vs best peer"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in ROWS:
        cells = [row.label]
        for strategy in strategies:
            figure = summary[strategy][row.key]
            text = _fmt(figure["median"])
            if spread and figure["min"] is not None and figure["min"] != figure["max"]:
                text += f" ({_fmt(figure['min'])}..{_fmt(figure['max'])})"
            if row.missing and (absent := figure["rounds"] - len(figure["values"])):
                text += f"; {row.missing} in {absent} of {figure['rounds']}"
            cells.append(text)
        cells.append(_compare(row, summary))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the driver -----------------------------------------------------------------------------


def calibrate(target_ms: float) -> tuple[int, float]:
    """`burn` iterations that take `target_ms` of CPU in this interpreter, and what they took.

    CPU time, not wall time: on a shared machine a preempted probe would shrink the task.
    """

    def timed(n: int) -> float:
        t0 = time.process_time()
        burn(n)
        return time.process_time() - t0

    probe = 50_000
    best = min(timed(probe) for _ in range(5))
    n = max(1_000, round(probe * target_ms / 1e3 / best))
    return n, min(timed(n) for _ in range(3)) * 1e3


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("starlette", "uvicorn", "httptools", "uvloop", "anyio", "aiomultiprocess"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _parser() -> argparse.ArgumentParser:
    # Starlette comes with the bench extra: imported where needed, after main() checked it.
    from ._server_app import STRATEGIES

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.server",
        description="A Starlette app on uvicorn offloading CPU work, per strategy, under wrk.",
    )
    parser.add_argument("--quick", action="store_true", help="short phases (about 20 s each)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--strategy",
        metavar="NAME[,NAME]",
        help=f"strategies, from {', '.join(STRATEGIES)}; default: {', '.join(DEFAULT_STRATEGIES)}"
        " (aioproc_cancel only where aioproc.asgi exists)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all strategies N times")
    parser.add_argument(
        "--loop", default="auto", choices=("auto", "asyncio", "uvloop"), help="uvicorn's loop"
    )
    parser.add_argument(
        "--python-loadgen",
        action="store_true",
        help="if wrk is missing, use a Python load generator instead (labelled in the output)",
    )
    return parser


def _strategies(arg: str | None) -> tuple[list[str], list[str]]:
    from ._server_app import STRATEGIES, cancel_on_disconnect_available  # bench extra

    wanted = [s.strip() for s in arg.split(",") if s.strip()] if arg else list(DEFAULT_STRATEGIES)
    unknown = [s for s in wanted if s not in STRATEGIES]
    if unknown:
        raise SystemExit(
            f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}"
        )
    notes = []
    if "aioproc_cancel" in wanted and not cancel_on_disconnect_available():
        wanted.remove("aioproc_cancel")
        notes.append(
            "aioproc_cancel left out: aioproc.asgi.CancelOnDisconnect does not exist in this"
            " checkout, so only the plain handler is measured"
        )
    return wanted, notes


def _missing_extra() -> str | None:
    """The first module of the bench extra that cannot be imported, if any."""
    for name in ("starlette", "uvicorn"):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2: a requirement is missing)."""
    if missing := _missing_extra():
        print(
            f"benchmarks.server needs the bench extra ({missing} is missing):"
            ' pip install -e ".[bench]"',
            file=sys.stderr,
        )
        return 2
    args = _parser().parse_args(argv)
    strategies, notes = _strategies(args.strategy)
    wrk = shutil.which("wrk")
    if wrk is None and not args.python_loadgen:
        print(
            "benchmarks.server needs wrk, the HTTP load generator, and it is not on PATH.\n"
            "Install it (Debian/Ubuntu: `sudo apt-get install -y wrk`; macOS: `brew install"
            " wrk`), or pass --python-loadgen to use a slower Python load generator instead.",
            file=sys.stderr,
        )
        return 2
    plan = QUICK if args.quick else FULL
    # Ctrl-C and SIGTERM both unwind through the `finally` clauses that stop everything.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    subreaper = become_subreaper()
    env = _child_env()
    iterations, cpu_ms = calibrate(plan.cpu_task_ms)
    abandon_iterations, abandon_ms = calibrate(plan.abandon_task_ms)
    rounds: list[dict[str, dict[str, Any]]] = []
    interrupted = False
    try:
        with tempfile.TemporaryDirectory(prefix="aioproc-server-") as tmp:
            gen = LoadGenerator(wrk, Path(tmp), env)
            print(
                f"load generator: {gen.name}; {len(strategies)} strategies x {args.rounds}"
                f" round(s); /cpu task {cpu_ms:.1f} ms, /abandon task {abandon_ms:.0f} ms"
                " of CPU",
                file=sys.stderr,
            )
            for note in notes:
                print(note, file=sys.stderr)
            for number in range(args.rounds):
                shift = number % len(strategies)
                order = strategies[shift:] + strategies[:shift]
                results: dict[str, dict[str, Any]] = {}
                for strategy in order:
                    t0 = time.monotonic()
                    results[strategy] = run_strategy(
                        strategy,
                        plan,
                        gen,
                        workers=args.workers,
                        iterations=iterations,
                        abandon_iterations=abandon_iterations,
                        loop=args.loop,
                        env=env,
                    )
                    status = results[strategy]["status"]
                    print(
                        f"round {number + 1}: {strategy} {status} in {time.monotonic() - t0:.0f} s",
                        file=sys.stderr,
                    )
                    if status != "ok":
                        print(results[strategy]["error"], file=sys.stderr)
                rounds.append({s: results[s] for s in strategies})
    except KeyboardInterrupt:
        interrupted = True
    finally:
        kill_descendants()
    if interrupted:
        print("interrupted: every process the benchmark started is stopped", file=sys.stderr)
        if not rounds:
            return 130
    summary = summarise(rounds)
    text = table(summary, spread=args.rounds > 1)
    header = (
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.workers} workers per"
        f" strategy, uvicorn loop {rounds[0][strategies[0]].get('loop', '?')},"
        f" load generator {gen.name}, {'quick' if args.quick else 'full'} phases,"
        f" {args.rounds} round(s) (medians{'; min..max in brackets' if args.rounds > 1 else ''})"
    )
    print(header)
    print(text)
    for note in notes:
        print(f"note: {note}")
    errors = {s: r["error"] for rnd in rounds for s, r in rnd.items() if r["status"] != "ok"}
    for strategy, error in errors.items():
        print(f"error: {strategy}: {error}")
    if args.json:
        report = {
            "machine": {
                "cpu_count": os.cpu_count(),
                "python": sys.version.split()[0],
                "load_average": os.getloadavg(),
                "versions": _versions(),
                "subreaper": subreaper,
            },
            "generator": gen.name,
            "plan": asdict(plan),
            "workers": args.workers,
            "calibration": {
                "cpu_iterations": iterations,
                "cpu_task_ms": cpu_ms,
                "abandon_iterations": abandon_iterations,
                "abandon_task_ms": abandon_ms,
            },
            "notes": notes,
            "rounds": rounds,
            "summary": summary,
            "table": text,
        }
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 130 if interrupted else 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
