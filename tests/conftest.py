"""Shared fixtures: every async test runs under asyncio, asyncio+uvloop and trio."""

from __future__ import annotations

import threading

import pytest

from aioproc._core import _fds, _hub, _spawn
from tests import procs

BACKENDS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=_spawn.START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


_LIBRARY_THREADS = ("Trio thread", "AnyIO worker thread")


def _children() -> set[int]:
    """Live descendants of this process, except the fork server."""
    found = procs.descendants()
    server = _spawn._forkserver
    if server is not None:
        found.discard(server.pid)
    return found


@pytest.fixture(scope="session", autouse=True)
def _event_loop_globals() -> None:
    """Let the event loop libraries open what they keep for the life of the process.

    libuv opens one signal pipe per process the first time a uvloop loop runs; opened
    inside a test, the leak guard would take it for that test's leak.
    """
    import uvloop

    async def nothing() -> None:
        pass

    uvloop.run(nothing())


@pytest.fixture(autouse=True)
def no_leaks() -> object:
    """No worker process, thread, fd or shared-memory segment outlives a test."""
    children_before = _children()
    fds_before = procs.fds()
    shm_before = procs.aioproc_shm()
    threads_before = set(threading.enumerate())
    yield
    server = _spawn._forkserver
    kept = {server._sock.fileno()} if server is not None else set()
    hub = _hub._local
    if hub is not None:
        # The hub lives as long as the process; connections of processes that ended are
        # dropped once the hub reads their end, which no event loop may have done yet.
        hub.poll()
        kept.add(hub.listener.fileno())
    leaked_fds = _fds.parent_fds() - kept
    assert not leaked_fds, f"aioproc fds left open: {sorted(leaked_fds)}"
    # Any other fd too (pipes, sockets, memfds, event loop selectors): what is open now was
    # open before, but for the fork server and hub that live as long as the process.
    if hub is not None:
        kept.update(hub.conns)
    now = procs.fds()
    opened = {fd: what for fd, what in now.items() if fd not in kept and fds_before.get(fd) != what}
    assert not opened, f"fds left open: {opened}"
    leaked = _children() - children_before
    assert not leaked, f"processes left behind: {sorted(leaked)}"
    assert procs.aioproc_shm() - shm_before == set(), "shared memory left in /dev/shm"
    # The event loop libraries keep idle worker threads cached on purpose; aioproc starts
    # no thread in this process, so any other new thread is a leak.
    left = [
        t
        for t in threading.enumerate()
        if t not in threads_before and t.is_alive() and not t.name.startswith(_LIBRARY_THREADS)
    ]
    assert not left, f"threads left running: {left}"
