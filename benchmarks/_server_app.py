"""The benchmark server: a Starlette app on uvicorn that offloads CPU work per request.

::

    python -m benchmarks._server_app --strategy S --fd N --iterations I ...
      uvicorn (one process, its event loop)             workers (2, the strategy's own)
        GET /health   → "ok", nothing offloaded
        GET /cpu      → await offload(cpu_task, I)   ─▶  burn ~10 ms, return the worker's pid
        GET /abandon  → await offload(counted_task)  ─▶  burn ~200 ms between two records
        GET /stats    → this process's request counters (JSON)

The driver (`benchmarks.server`) starts one such process per strategy, listening on a socket
it bound itself (`--fd`), and drives it with wrk. Each strategy opens its pool in the app's
lifespan and closes it on shutdown, the way its documentation shows for a long-lived app:

- ``aioproc``: ``aioproc.ProcessPool(max_workers=W)``; ``await pool.apply(fn, *args)``.
- ``aioproc_cancel``: the same, the app wrapped in ``aioproc.asgi.CancelOnDisconnect``
  (only where that module exists).
- ``aioproc_run``: ``await aioproc.run(fn, *args)`` on the default pool (one worker per CPU,
  whatever W says; no code owns the pool).
- ``ppe``: ``concurrent.futures.ProcessPoolExecutor(max_workers=W)`` with
  ``loop.run_in_executor``.
- ``anyio``: ``anyio.to_process.run_sync(fn, *args, limiter=CapacityLimiter(W))``.
- ``aiomultiprocess``: ``aiomultiprocess.Pool(processes=W)``; ``await pool.apply(afn, args)``
  (coroutine twins of the tasks: it runs only coroutine functions).

Invariants:
    - An offloaded call that raises answers 503 with the exception's type, counted in
      ``failed``; tracebacks are not logged (thousands of them after a pool breaks would
      burn the server's CPU and skew what is measured). Cancellation is not caught.
    - ``pending`` in /stats counts handlers that started and have not answered yet: requests
      whose task was lost stay in it.
    - With spawn-based peers this module is re-imported as ``__mp_main__`` by their workers
      (by anyio's by file path, outside its package): nothing runs at import time beyond
      definitions, and its imports are absolute.

Tunables:
    - ``--loop`` (uvicorn's loop: auto = uvloop when installed), ``--workers``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

# Absolute, not relative: anyio's workers re-run the main module by its file path, outside
# its package, where a relative import fails (every task would fail as BrokenWorkerProcess).
from benchmarks import _server_tasks

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp

Offload = Callable[..., Awaitable[Any]]
"""`offload(fn, *args)`: run `fn(*args)` in a worker of the strategy, await its result."""


# Each opener imports its own library: a server process loads only the strategy it runs.


@asynccontextmanager
async def _aioproc(workers: int) -> AsyncIterator[Offload]:
    import aioproc

    async with aioproc.ProcessPool(max_workers=workers) as pool:
        yield pool.apply


@asynccontextmanager
async def _aioproc_run(workers: int) -> AsyncIterator[Offload]:
    import aioproc

    del workers  # the default pool has one worker per CPU; nothing here can size it
    yield aioproc.run


@asynccontextmanager
async def _ppe(workers: int) -> AsyncIterator[Offload]:
    from concurrent.futures import ProcessPoolExecutor

    loop = asyncio.get_running_loop()
    executor = ProcessPoolExecutor(max_workers=workers)

    def offload(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return loop.run_in_executor(executor, fn, *args)

    try:
        yield offload
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@asynccontextmanager
async def _anyio(workers: int) -> AsyncIterator[Offload]:
    import anyio
    import anyio.to_process

    limiter = anyio.CapacityLimiter(workers)

    def offload(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return anyio.to_process.run_sync(fn, *args, limiter=limiter)

    # anyio's workers belong to the event loop: it stops them when the loop ends.
    yield offload


_ASYNC_TWINS: dict[Callable[..., Any], Callable[..., Any]] = {
    _server_tasks.cpu_task: _server_tasks.cpu_task_async,
    _server_tasks.counted_task: _server_tasks.counted_task_async,
}


@asynccontextmanager
async def _aiomultiprocess(workers: int) -> AsyncIterator[Offload]:
    import aiomultiprocess  # type: ignore[import-untyped]

    async with aiomultiprocess.Pool(processes=workers) as pool:

        def offload(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
            result: Awaitable[Any] = pool.apply(_ASYNC_TWINS[fn], args)
            return result

        yield offload


STRATEGIES: dict[str, Callable[[int], Any]] = {
    "aioproc": _aioproc,
    "aioproc_cancel": _aioproc,
    "aioproc_run": _aioproc_run,
    "ppe": _ppe,
    "anyio": _anyio,
    "aiomultiprocess": _aiomultiprocess,
}


def cancel_on_disconnect_available() -> bool:
    """Whether this checkout of aioproc has the ASGI disconnect watcher."""
    try:
        return importlib.util.find_spec("aioproc.asgi") is not None
    except ModuleNotFoundError:
        return False


class _Counters:
    def __init__(self) -> None:
        self.started = 0
        self.ok = 0
        self.failed = 0
        self.cancelled = 0
        self.failures: dict[str, int] = {}

    def as_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "ok": self.ok,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "pending": self.started - self.ok - self.failed - self.cancelled,
            "failures": dict(self.failures),
        }


def build_app(
    strategy: str,
    *,
    workers: int,
    iterations: int,
    abandon_iterations: int,
    counter_path: str,
) -> ASGIApp:
    """The Starlette app for one strategy.

    Args:
        strategy: A key of `STRATEGIES`.
        workers: Worker processes for the strategy's pool.
        iterations: `burn` iterations of one /cpu request (~10 ms).
        abandon_iterations: `burn` iterations of one /abandon request (~200 ms).
        counter_path: File where /abandon's tasks record their starts and ends.
    """
    opener = STRATEGIES[strategy]
    offload: Offload | None = None
    counters = {"cpu": _Counters(), "abandon": _Counters()}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal offload
        async with opener(workers) as offload:
            yield

    async def _offloaded(name: str, fn: Callable[..., Any], *args: Any) -> PlainTextResponse:
        counter = counters[name]
        counter.started += 1
        assert offload is not None
        try:
            value = await offload(fn, *args)
        except asyncio.CancelledError:
            counter.cancelled += 1
            raise
        except Exception as exc:  # whatever the strategy's library raises: that is measured
            counter.failed += 1
            kind = type(exc).__name__
            counter.failures[kind] = counter.failures.get(kind, 0) + 1
            return PlainTextResponse(kind, status_code=503)
        counter.ok += 1
        return PlainTextResponse(str(value))

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def cpu(request: Request) -> PlainTextResponse:
        return await _offloaded("cpu", _server_tasks.cpu_task, iterations)

    async def abandon(request: Request) -> PlainTextResponse:
        return await _offloaded(
            "abandon", _server_tasks.counted_task, abandon_iterations, counter_path
        )

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "pid": os.getpid(),
                "loop": type(asyncio.get_running_loop()).__module__,
                **{name: counter.as_dict() for name, counter in counters.items()},
            }
        )

    app: ASGIApp = Starlette(
        routes=[
            Route("/health", health),
            Route("/cpu", cpu),
            Route("/abandon", abandon),
            Route("/stats", stats),
        ],
        lifespan=lifespan,
    )
    if strategy == "aioproc_cancel":
        from aioproc.asgi import CancelOnDisconnect  # type: ignore[import-not-found]

        app = CancelOnDisconnect(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Serve the app for one strategy on an inherited listening socket until SIGTERM."""
    import uvicorn  # only the server process needs it, not build_app's users (the tests)

    parser = argparse.ArgumentParser(prog="python -m benchmarks._server_app")
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), required=True)
    parser.add_argument("--fd", type=int, required=True, help="listening socket to serve on")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--abandon-iterations", type=int, required=True)
    parser.add_argument("--counter", required=True, help="file for /abandon's records")
    parser.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop"))
    args = parser.parse_args(argv)
    app = build_app(
        args.strategy,
        workers=args.workers,
        iterations=args.iterations,
        abandon_iterations=args.abandon_iterations,
        counter_path=args.counter,
    )
    config = uvicorn.Config(
        app,
        loop=args.loop,
        lifespan="on",
        log_level="warning",
        access_log=False,
        # Past this, requests still in flight (a lost task's awaiter) are cancelled.
        timeout_graceful_shutdown=5,
    )
    # Not `fd=`: uvicorn wraps that as an AF_UNIX socket, so the loop would not set
    # TCP_NODELAY on accepted connections and Nagle would add ~40 ms to every response.
    listener = socket.socket(fileno=args.fd)  # family detected from the descriptor
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
