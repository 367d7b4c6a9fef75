"""aioproc against its peers, measured in the same run.

Usage (from the project root)::

    python -m benchmarks.peers [--quick] [--only FIGURE,...] [--impl NAME,...]
                               [--workers N] [--timeout S] [--json PATH]

Each implementation runs in its own child process (`--child IMPL --figures ...`), so one
peer's workers and threads never disturb another's; the parent only collects the children's
JSON reports, prints the machine, the table and the ratio of aioproc to the best peer
(direction-aware: lower is better for latency, startup, idle, lock and event, higher for
the rest), and optionally writes everything as JSON. Peers that are not installed are left
out.

This module is imported as `__main__`/`__mp_main__` by the workers some peers start, so it
imports nothing at module level beyond `sys`; the real work lives in the private modules.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from ._figures import Sizes

_CHILD_GRACE_S = 30.0
"""Slack on top of the per-figure timeouts before the parent gives up on a child."""


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    import argparse

    from ._figures import FIGURES

    choices = list(dict.fromkeys(name.split(".")[0] for name in FIGURES))
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers",
        description="Benchmark aioproc against its peers; one child process per implementation.",
    )
    parser.add_argument(
        "--only",
        type=_csv,
        metavar="FIGURE[,FIGURE]",
        help=f"figures to run, from {', '.join(choices)} (startup and memory also select their"
        " rows per start method, startup.fork ...); default all",
    )
    parser.add_argument(
        "--impl",
        type=_csv,
        metavar="NAME[,NAME]",
        help="implementations to run; default all installed",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: the whole run takes under a minute"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds allowed per figure (default 120, quick 20)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    # Internal: the per-implementation child, and its per-sample grandchildren.
    parser.add_argument("--child", metavar="IMPL", help=argparse.SUPPRESS)
    parser.add_argument("--figures", type=_csv, help=argparse.SUPPRESS)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    return parser


def _child_env() -> dict[str, str]:
    """The children's environment: this checkout importable, `src/` first if present."""
    import os

    from ._figures import ROOT

    paths = [str(ROOT)]
    if (ROOT / "src" / "aioproc").is_dir():
        paths.insert(0, str(ROOT / "src"))
        # Installed packages (the peers) come with their bytecode compiled; a source
        # checkout may not (PYTHONDONTWRITEBYTECODE), and its workers would then compile
        # aioproc at every start. Compile it once, as pip does for an installed package.
        import compileall

        compileall.compile_dir(str(ROOT / "src" / "aioproc"), quiet=1)
    if existing := os.environ.get("PYTHONPATH"):
        paths.append(existing)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _run_impl(impl: str, figures: list[str], sizes: Sizes, env: dict[str, str]) -> dict[str, Any]:
    """Run one implementation's child (again for figures it had to skip); merge its reports."""
    import json
    import subprocess

    from ._proc import kill_descendants, settle

    merged: dict[str, Any] = {"impl": impl, "installed": True, "figures": {}}
    remaining = figures
    while remaining:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.peers",
            "--child",
            impl,
            "--figures",
            ",".join(remaining),
            "--workers",
            str(sizes.workers),
            "--timeout",
            str(sizes.timeout_s),
        ]
        if sizes.quick:
            cmd.append("--quick")
        hard_limit = len(remaining) * (sizes.timeout_s + _CHILD_GRACE_S) + _CHILD_GRACE_S
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
        try:
            out, _ = child.communicate(timeout=hard_limit)
            failure = f"child exited with status {child.returncode} without a report"
        except subprocess.TimeoutExpired:
            child.kill()
            out, _ = child.communicate()
            failure = f"child killed after {hard_limit:.0f} s"
        finally:
            if leftovers := settle(1.0):
                print(
                    f"  [{impl}] {len(leftovers)} process(es) outlived the child: killing"
                    f" {leftovers}",
                    file=sys.stderr,
                )
                kill_descendants()
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            report: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            for name in remaining:
                merged["figures"][name] = {"status": "error", "error": failure}
            return merged
        if not report["installed"]:
            return report
        merged.update({k: v for k, v in report.items() if k != "figures"})
        merged["figures"].update(report["figures"])
        skipped = [n for n in remaining if report["figures"].get(n, {}).get("status") == "skipped"]
        if len(skipped) == len(remaining):  # no progress; should not happen
            break
        remaining = skipped
    return merged


def _notes(reports: dict[str, dict[str, Any]], figures: list[str]) -> list[str]:
    from . import _curves
    from ._figures import FIGURES
    from ._impls import IMPLS, SUBJECT
    from ._report import format_value

    lines = []
    for name, report in reports.items():
        impl = IMPLS[name]
        if report["installed"]:
            version = f" {report['version']}" if report.get("version") else ""
            default = f"; default start method {impl.default_start}" if impl.default_start else ""
            lines.append(f"{name}{version}: {impl.about}{default}")
    latency = {n: r["figures"].get("latency", {}) for n, r in reports.items() if r["installed"]}
    floor, subject = latency.get("raw_pipe", {}), latency.get(SUBJECT, {})
    if "latency" in figures and floor.get("status") == "ok" and subject.get("status") == "ok":
        lines.append(
            f"latency floor (raw_pipe) {format_value(floor['value'], 'µs')} µs:"
            f" {SUBJECT} is {subject['value'] / floor['value']:.2f}x the floor"
        )
    if "idle" in figures:
        parts = [
            f"{n} {r['figures']['idle']['detail']['parent_pct']:.2f}% parent +"
            f" {r['figures']['idle']['detail']['descendants_pct']:.2f}% in"
            f" {r['figures']['idle']['detail']['descendants']} descendants"
            for n, r in reports.items()
            if r["installed"] and r["figures"].get("idle", {}).get("status") == "ok"
        ]
        if parts:
            lines.append("idle split: " + "; ".join(parts))
    for name in (f for f in figures if f.startswith("payload")):
        subject = reports.get(SUBJECT, {}).get("figures", {}).get(name, {})
        if subject.get("status") != "ok":
            continue
        d = subject["detail"]
        ways = [f"bytes {d['vs_memcpy']:.2f}x"] + [
            f"{way} {d[f'{way}_gbps']:.3g} GB/s = {d[f'{way}_vs_memcpy']:.2f}x"
            for way in ("memoryview", "shared_buffer")
            if f"{way}_gbps" in d
        ]
        lines.append(
            f"{name}: memcpy here {d['memcpy_gbps']:.3g} GB/s; {SUBJECT} "
            + ", ".join(ways)
            + f" of it; a call moving nothing takes {1e6 * d['tiny_call_s']:.0f} µs"
        )
    lines.extend(_curves.notes(reports, figures))
    if any(f.startswith("startup") for f in figures):
        lines.append(f"startup rows: {FIGURES['startup'].about}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with `--child`, one implementation's part of it)."""
    args = _parser().parse_args(argv)
    from ._figures import Sizes

    sizes = Sizes.make(workers=args.workers, quick=args.quick, timeout_s=args.timeout)
    if args.child:
        from . import _child

        return _child.main(args.child, args.figures or [], sizes, inner=args.inner)
    return _parent(args, sizes)


def _parent(args: argparse.Namespace, sizes: Sizes) -> int:
    import json

    from ._figures import FIGURES, select
    from ._impls import IMPLS, SUBJECT
    from ._proc import become_subreaper
    from ._report import compare, machine, table

    try:
        figures = select(args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    impls = args.impl or list(IMPLS)
    if unknown := [i for i in impls if i not in IMPLS]:
        print(
            f"error: unknown implementation(s) {', '.join(unknown)}; known: {', '.join(IMPLS)}",
            file=sys.stderr,
        )
        return 2
    impls = [i for i in IMPLS if i in impls]  # table order

    host = machine(sizes.workers)
    print(
        f"machine: {host['cpu_count']} CPUs ({host['usable_cpus']} usable),"
        f" {host['cpu_model'] or 'unknown CPU'}; {host['platform']}"
    )
    print(
        f"python: {host['implementation']} {host['python']}; workers: {sizes.workers};"
        f" {'quick' if sizes.quick else 'full'} sizes; timeout {sizes.timeout_s:g} s per figure",
        flush=True,
    )
    if wakeup := host["pipe_round_trip_us"]:
        print(
            f"pipe round trip, blocking, no event loop: {wakeup['same_cpu']:.1f} µs on one CPU,"
            f" {wakeup['cross_cpu']:.1f} µs across CPUs (the machine's wake-up cost)"
        )
    if speedup := host["bare_parallel_speedup"]:
        print(
            f"bare parallel speed-up, {min(sizes.workers, host['usable_cpus'])} forked processes"
            f" burning CPU, no pool: {speedup:.2f}x (the ceiling for scaling)"
        )
    if not become_subreaper():
        print("warning: cannot adopt orphaned processes; leftovers go untracked", file=sys.stderr)

    env = _child_env()
    reports: dict[str, dict[str, Any]] = {}
    for impl in impls:
        mine = [f for f in figures if impl in FIGURES[f].runners]
        if not mine:
            continue
        print(f"running {impl}: {', '.join(mine)}", file=sys.stderr, flush=True)
        reports[impl] = _run_impl(impl, mine, sizes, env)
        if not reports[impl]["installed"]:
            print(f"  [{impl}] not installed ({reports[impl].get('error')})", file=sys.stderr)

    print()
    print(table(figures, reports))
    missing = [n for n, r in reports.items() if not r["installed"] and n != SUBJECT]
    if missing:
        print("not installed: " + ", ".join(missing))
    for line in _notes(reports, figures):
        print(f"- {line}")

    if args.json:
        comparisons = {name: vars(c) for name in figures if (c := compare(reports, FIGURES[name]))}
        document = {
            "machine": host,
            "settings": vars(sizes),
            "figures": {
                name: {
                    "unit": FIGURES[name].unit,
                    "better": FIGURES[name].better,
                    "about": FIGURES[name].about,
                }
                for name in figures
            },
            "implementations": reports,
            "ratio_to_best_peer": comparisons,
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
