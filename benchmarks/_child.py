"""The child side: measure the chosen figures for one implementation, report JSON.

The child's stdout carries exactly one line, the JSON report, at the end; anything else
(progress, warnings, output from workers that inherited the descriptor) goes to stderr.

Every figure runs under a timeout. A figure that overruns while the event loop is still
responsive is cancelled (`asyncio.timeout`); one that blocks the loop (a stuck `join()`) is
caught by a watchdog thread, which reports what is done, marks the rest "skipped" so the
parent can run them in a new child, and ends the process.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from typing import Any

from ._figures import FIGURES, Figure, Measurement, Runner, Sizes
from ._impls import IMPLS, Impl

Result = dict[str, Any]
"""`{"status": "ok", "value": ..., "detail": {...}}`, or status "error" (with "error"),
"n/a" or "skipped"."""

_HANG_GRACE_S = 15.0
"""How long past its timeout a figure may block the loop before the watchdog steps in."""


def short_error(exc: BaseException) -> str:
    """A one-line description of an exception for a table cell."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _log(impl: str, message: str) -> None:
    print(f"  [{impl}] {message}", file=sys.stderr, flush=True)


def _version(impl: Impl) -> str | None:
    if impl.distribution is None:
        return None
    try:
        return metadata.version(impl.distribution)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(impl.imports[0]) if impl.imports else None
        return getattr(module, "__version__", None)


async def _bounded(runner: Runner, sizes: Sizes, timeout_s: float) -> Measurement:
    async with asyncio.timeout(timeout_s):
        return await runner(sizes)


def _run_here(runner: Runner, sizes: Sizes, timeout_s: float, loop: str) -> Measurement:
    try:
        if loop == "uvloop":
            import uvloop

            return uvloop.run(_bounded(runner, sizes, timeout_s))
        return asyncio.run(_bounded(runner, sizes, timeout_s))
    except TimeoutError as exc:
        if str(exc):
            raise
        raise TimeoutError(f"timed out after {timeout_s:.3g} s") from None


def _run_in_fresh_process(impl: str, figure: str, sizes: Sizes, timeout_s: float) -> Measurement:
    """One sample in a new interpreter (`--child IMPL --figures FIGURE --inner`)."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.peers",
        "--child",
        impl,
        "--figures",
        figure,
        "--inner",
        "--workers",
        str(sizes.workers),
        "--timeout",
        str(timeout_s),
    ]
    if sizes.quick:
        cmd.append("--quick")
    try:
        done = subprocess.run(
            cmd, stdout=subprocess.PIPE, timeout=timeout_s + _HANG_GRACE_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError("timed out (sample process hung)") from None
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if not lines:
        raise RuntimeError(f"sample process exited {done.returncode} without a report")
    report = json.loads(lines[-1])
    if not report["installed"]:
        raise RuntimeError(report["error"])
    result: Result = report["figures"][figure]
    if result["status"] != "ok":
        raise RuntimeError(result.get("error", result["status"]))
    return Measurement(result["value"], result["detail"])


def _measure(impl: Impl, figure: Figure, sizes: Sizes, inner: bool) -> Result:
    runner = figure.runners.get(impl.name)
    if runner is None:
        return {"status": "n/a"}
    allowed = sizes.timeout_s * figure.timeout_factor
    deadline = time.monotonic() + allowed
    samples: list[Measurement] = []
    fresh = figure.fresh_process and not inner
    for _ in range(1 if inner else figure.samples(sizes)):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {allowed:g} s")
        if fresh:
            samples.append(_run_in_fresh_process(impl.name, figure.name, sizes, remaining))
        else:
            samples.append(_run_here(runner, sizes, remaining, figure.loop))
    if len(samples) == 1:
        return {"status": "ok", "value": samples[0].value, "detail": samples[0].detail}
    values = [s.value for s in samples]
    return {
        "status": "ok",
        "value": statistics.median(values),
        "detail": {**samples[0].detail, "samples": values},
    }


class _Report:
    """The report being built, and the single place that writes it out."""

    def __init__(self, impl: Impl, out_fd: int) -> None:
        self._out_fd = out_fd
        self._lock = threading.Lock()
        self._written = False
        self.data: dict[str, Any] = {"impl": impl.name, "installed": True, "figures": {}}

    def write(self) -> None:
        with self._lock:
            if self._written:
                return
            self._written = True
            line = json.dumps(self.data) + "\n"
            os.write(self._out_fd, line.encode())


def _watchdog(report: _Report, figure: str, pending: list[str], after_s: float) -> threading.Timer:
    def fire() -> None:
        figures = report.data["figures"]
        figures[figure] = {"status": "error", "error": "timed out (event loop blocked)"}
        for name in pending:
            figures.setdefault(name, {"status": "skipped"})
        print(f"  [{report.data['impl']}] {figure}: blocked, giving up", file=sys.stderr)
        report.write()
        os._exit(3)

    timer = threading.Timer(after_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def main(impl_name: str, figure_names: list[str], sizes: Sizes, *, inner: bool) -> int:
    """Measure `figure_names` for one implementation and print the JSON report.

    Returns:
        The process exit status.
    """
    # Keep stdout for the report alone: whatever else writes to fd 1, including worker
    # processes that inherit it, lands on stderr.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    impl = IMPLS[impl_name]
    report = _Report(impl, out_fd)
    try:
        for module in impl.imports:
            importlib.import_module(module)
    except Exception as exc:
        report.data.update(installed=False, error=short_error(exc))
        report.write()
        return 0
    report.data["version"] = _version(impl)
    if impl.imports:
        report.data["module_file"] = getattr(sys.modules[impl.imports[0]], "__file__", None)

    for i, name in enumerate(figure_names):
        figure = FIGURES[name]
        allowed = sizes.timeout_s * figure.timeout_factor
        timer = _watchdog(report, name, figure_names[i + 1 :], allowed + _HANG_GRACE_S)
        try:
            result = _measure(impl, figure, sizes, inner)
        except Exception as exc:
            result = {"status": "error", "error": short_error(exc)}
        finally:
            timer.cancel()
        report.data["figures"][name] = result
        if not inner:
            shown = (
                f"{result['value']:.4g} {figure.unit}"
                if result["status"] == "ok"
                else result.get("error", result["status"])
            )
            _log(impl.name, f"{name}: {shown}")
    report.write()
    return 0
