"""The fork server: a small process that forks ready-to-run workers on request.

It is started once per parent process, imports aioproc's worker (and what it needs) so that
every fork begins warm, then serves requests on an anonymous socketpair::

    request:  b"F" + SCM_RIGHTS [task_r, result_w, status_w]
    reply:    8-byte pid (or minus errno when fork failed)
    later:    4-byte signed exit code written to status_w when that child has been reaped

When the parent goes away (EOF on the socket) it kills every worker it forked, process group
and all, and exits: nothing outlives the parent.

Invariants:
- Workers share the server's memory until one side writes to it, so the server stays
  lean: before its first fork it imports only what every worker runs (``_worker`` and the
  modules under it). What only some workers need (asyncio for coroutine tasks, cloudpickle
  for functions sent by value, the IPC proxies) they import themselves when they need it.
- The server imports those ahead (``_WARM_MODULES``) only once it has been asked for a
  worker after the first burst of requests (a replacement, a second pool), as soon as it
  is idle again: a program that holds one pool keeps the lean server, one that forks again
  gets warm forks from then on. (Whatever the server imports after a fork, it writes to
  pages it shared with that fork's worker, which both then pay for.) The warm-up never
  delays a fork the parent waits for.
- Everything the server holds is frozen (``gc.freeze``) before each fork: a worker's cycle
  collector never walks, and so never writes to, the objects it inherited.

Tunables:
- ``_BURST_GAP``: requests closer than this to the fork before belong to one burst (a
  pool starts its workers back to back); a request after a longer gap starts a new one.
- ``_WARM_AFTER``: how long the server must be idle before it warms up.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import time
from typing import NoReturn

from . import _worker  # what every fork runs, imported once here (the hub with it)

# Modules that many workers import sooner or later (asyncio for coroutine tasks and for the
# user's own modules, cloudpickle for functions from a script's __main__, the IPC proxies
# for objects passed as arguments). Imported once a second burst of requests has been
# served (see the Invariants): from then on, forks start with them.
_WARM_MODULES = (
    "cloudpickle",
    "asyncio",
    "uvloop",
    "aioproc._core._worker_async",
    "aioproc._queue",
    "aioproc._pipe",
    "aioproc._sync",
    "aioproc._shared",
    "aioproc._manager",
)
_BURST_GAP = 0.25  # seconds; see Tunables
_WARM_AFTER = 0.01  # seconds without a request before warming up


def _warm_up() -> None:
    for name in _WARM_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def main() -> NoReturn:
    sock = socket.socket(fileno=int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, int] = {}  # pid -> status_w
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status_w = children.pop(pid, None)
            if status_w is not None:
                code = os.waitstatus_to_exitcode(status)
                with contextlib.suppress(OSError):
                    os.write(status_w, code.to_bytes(4, "little", signed=True))
                os.close(status_w)

    warm = False
    warm_when_idle = False
    last_fork = 0.0  # time.monotonic() of the last fork, 0 before the first
    while True:
        events = selector.select(_WARM_AFTER if warm_when_idle else None)
        if not events and warm_when_idle:
            warm, warm_when_idle = True, False
            _warm_up()
            continue
        for key, _ in events:
            if key.fileobj is sock:
                try:
                    msg, fds, _, _ = socket.recv_fds(sock, 16, 3)
                except OSError:
                    msg, fds = b"", []
                if not msg:
                    for pid in children:
                        with contextlib.suppress(OSError):
                            os.killpg(pid, signal.SIGKILL)
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
                    os._exit(0)
                if len(fds) != 3:
                    for fd in fds:
                        os.close(fd)
                    continue
                task_r, result_w, status_w = fds
                now = time.monotonic()
                if not warm and last_fork and now - last_fork > _BURST_GAP:
                    warm_when_idle = True  # a later burst: see the Invariants
                last_fork = now
                gc.freeze()  # see the Invariants; cheap: moves the collector's lists
                try:
                    pid = os.fork()
                except OSError as exc:
                    errno = exc.errno or 1
                    sock.sendall((-errno).to_bytes(8, "little", signed=True))
                    for fd in fds:
                        os.close(fd)
                    continue
                if pid == 0:
                    try:
                        selector.close()
                        sock.close()
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        for fd in (wake_r, wake_w, status_w, *children.values()):
                            os.close(fd)
                        _worker.run(task_r, result_w)
                    finally:
                        os._exit(1)
                os.close(task_r)
                os.close(result_w)
                children[pid] = status_w
                sock.sendall(pid.to_bytes(8, "little", signed=True))
            else:
                with contextlib.suppress(OSError):
                    while os.read(wake_r, 4096):
                        pass
                reap()
