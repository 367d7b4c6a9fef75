"""Starting worker processes: forkserver, spawn and fork, and watching them end.

Every worker gets exactly two pipe ends: the read end of its task pipe and the write end of
its result pipe. The parent keeps the other two. Nothing else is inherited on purpose.

- ``forkserver`` (default on Linux): one server process per parent, started on first use
  with aioproc already imported, forks each worker on request. Fds travel over an anonymous
  socketpair with SCM_RIGHTS; the exit status comes back on a per-worker status pipe.
  Workers start in about a millisecond and inherit nothing of the parent's state.
- ``spawn``: a fresh ``python -c`` per worker; slowest to start, shares nothing.
- ``fork``: ``os.fork()`` of the parent; fast, inherits the parent's memory (and its
  hazards: locks held by other threads). The child closes every aioproc fd but its own two,
  so a sibling's pipes never keep a dead parent looking alive, and freezes what it
  inherited (``gc.freeze``), so that its cycle collector never unshares those pages.

Unlike ``multiprocessing``, no start method re-imports the parent's ``__main__``: functions
and classes from ``__main__`` are sent by value, so scripts need no ``if __name__`` guard.

A :class:`ProcessHandle` exposes ``sentinel``, an fd that becomes readable once the process
has exited, which the dispatcher hands to the event loop (a pidfd for direct children, the
status pipe for forkserver children).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import signal
import socket
import sys
import threading
import warnings

from . import _fds, _worker

__all__ = (
    "START_METHODS",
    "ProcessHandle",
    "default_start_method",
    "make_pipes",
    "resolve_start_method",
    "shutdown_forkserver",
    "start_process",
)

START_METHODS = ("forkserver", "spawn", "fork")

_F_SETPIPE_SZ = 1031  # Linux; a bigger pipe means fewer wake-ups for bursts and payloads
_PIPE_SIZE = 1 << 20


def _after_fork_in_child() -> None:
    # The child's own fork server is started anew if it needs one (its fds, the parent's
    # socket among them, are closed by _fds' own hook).
    global _forkserver
    _forkserver = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_start_method() -> str:
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def resolve_start_method(method: str | None) -> str:
    """The start method to use for ``method`` (None: the platform's default).

    Raises:
        ValueError: not one of START_METHODS.
    """
    if method is None:
        return default_start_method()
    if method not in START_METHODS:
        raise ValueError(
            f"start_method must be one of {', '.join(map(repr, START_METHODS))}; got {method!r}"
        )
    return method


def make_pipes() -> tuple[int, int, int, int]:
    """Return ``(task_r, task_w, result_r, result_w)``; the parent ends are non-blocking."""
    task_r, task_w = os.pipe()
    result_r, result_w = os.pipe()
    for fd in (task_w, result_w):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    os.set_blocking(task_w, False)
    os.set_blocking(result_r, False)
    return task_r, task_w, result_r, result_w


class ProcessHandle:
    """A started worker process.

    Attributes:
        pid: its process id (also its process group id).
        sentinel: an fd that becomes readable once the process has exited.
    """

    def __init__(self, pid: int, sentinel: int, pidfd: int | None, popen: object = None):
        self.pid = pid
        self.sentinel = sentinel
        self._pidfd = pidfd
        self._popen = popen
        self.exitcode: int | None = None
        _fds.register_fds(*{sentinel, pidfd} - {None})  # type: ignore[arg-type]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker and everything it started (its process group)."""
        if self.exitcode is not None:
            return
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._pidfd, sig)
        else:  # pragma: no cover - no pidfd on this kernel
            with contextlib.suppress(OSError):
                os.kill(self.pid, sig)
        # The group goes too: grandchildren a task started must not outlive the worker.
        with contextlib.suppress(OSError):
            os.killpg(self.pid, sig)

    def reap(self) -> int:
        """Collect the exit status once ``sentinel`` is readable (blocks until then).

        Returns:
            the exit code, or minus the signal number that killed the process.
        """
        if self.exitcode is None:
            self.exitcode = self._collect()
            self.close()
        return self.exitcode

    def _collect(self) -> int:
        if self._popen is not None:  # spawn
            return int(self._popen.wait())  # type: ignore[attr-defined]
        if self._pidfd is not None and self.sentinel == self._pidfd:  # fork
            _, status = os.waitpid(self.pid, 0)
            return os.waitstatus_to_exitcode(status)
        # forkserver: the server writes the status, or closes the pipe if it died itself.
        os.set_blocking(self.sentinel, True)
        data = b""
        while len(data) < 4:
            chunk = os.read(self.sentinel, 4 - len(data))
            if not chunk:
                return -int(signal.SIGKILL)
            data += chunk
        return int.from_bytes(data, "little", signed=True)

    def close(self) -> None:
        fds = {self.sentinel, self._pidfd} - {None, -1}
        _fds.unregister_fds(*fds)  # type: ignore[arg-type]
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # type: ignore[arg-type]
        self.sentinel = -1
        self._pidfd = None


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # pragma: no cover - old kernel
        return None


def start_process(method: str, task_r: int, result_w: int) -> ProcessHandle:
    """Start a worker on the given child ends of its pipes (closed here in the parent).

    Raises:
        ValueError: unknown start method.
        OSError: the process could not be started.
    """
    try:
        if method == "forkserver":
            return _get_forkserver().start(task_r, result_w)
        if method == "spawn":
            return _spawn_interpreter(task_r, result_w)
        if method == "fork":
            return _fork(task_r, result_w)
        raise ValueError(f"start_method must be one of {', '.join(START_METHODS)}; got {method!r}")
    finally:
        os.close(task_r)
        os.close(result_w)


def _python_args() -> list[str]:
    import subprocess  # here: ~30 ms to import; only spawn and the fork server's start need it

    # Same interpreter flags as the parent (-X dev, -W error, -O ...), as multiprocessing does.
    return [sys.executable, *subprocess._args_from_interpreter_flags()]  # type: ignore[attr-defined]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The package must be importable in the child even when the parent found it through a
    # sys.path tweak rather than an installation.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _spawn_interpreter(task_r: int, result_w: int) -> ProcessHandle:
    import subprocess  # here: see _python_args

    popen = subprocess.Popen(
        [
            *_python_args(),
            "-c",
            "from aioproc._core._worker import main; main()",
            str(task_r),
            str(result_w),
        ],
        pass_fds=(task_r, result_w),
        env=_child_env(),
        process_group=0,
        stdin=subprocess.DEVNULL,
    )
    pidfd = _pidfd(popen.pid)
    assert pidfd is not None, "aioproc needs pidfd_open (Linux >= 5.3)"
    return ProcessHandle(popen.pid, pidfd, pidfd, popen)


def _fork(task_r: int, result_w: int) -> ProcessHandle:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # the user may have replaced the stream
            stream.flush()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a multi-threaded process; the user asked for
        # fork, and the child only runs the worker loop.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            # The parent's objects are shared with it until written to: the worker's cycle
            # collector leaves them alone (the parent's own collector is not touched).
            gc.freeze()
            _fds.close_parent_fds(keep=(task_r, result_w))
            _worker.run(task_r, result_w)
        finally:
            os._exit(1)
    pidfd = _pidfd(pid)
    assert pidfd is not None, "aioproc needs pidfd_open (Linux >= 5.3)"
    return ProcessHandle(pid, pidfd, pidfd)


class _ForkServer:
    """Client side of the fork server (see ``_forkserver.py``)."""

    def __init__(self) -> None:
        import subprocess  # here: see _python_args

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._popen = subprocess.Popen(
                [
                    *_python_args(),
                    "-c",
                    "from aioproc._core._forkserver import main; main()",
                    str(child.fileno()),
                ],
                pass_fds=(child.fileno(),),
                env=_child_env(),
                process_group=0,
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self._sock = parent
        self._lock = threading.Lock()
        self.pid = self._popen.pid
        _fds.register_fds(parent.fileno())

    def alive(self) -> bool:
        return self._popen.poll() is None

    def start(self, task_r: int, result_w: int) -> ProcessHandle:
        status_r, status_w = os.pipe()
        try:
            with self._lock:
                socket.send_fds(self._sock, [b"F"], [task_r, result_w, status_w])
                data = b""
                while len(data) < 8:
                    chunk = self._sock.recv(8 - len(data))
                    if not chunk:
                        raise OSError("the aioproc fork server exited")
                    data += chunk
        except BaseException:
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
        pid = int.from_bytes(data, "little", signed=True)
        if pid <= 0:
            os.close(status_r)
            raise OSError(-pid, f"the fork server could not fork: {os.strerror(-pid)}")
        return ProcessHandle(pid, status_r, _pidfd(pid))

    def shutdown(self) -> None:
        import subprocess  # here: see _python_args

        _fds.unregister_fds(self._sock.fileno())
        self._sock.close()  # the server kills what it forked and exits on EOF
        try:
            self._popen.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - defensive
            self._popen.kill()
            self._popen.wait()


_forkserver: _ForkServer | None = None
_forkserver_lock = threading.Lock()


def _get_forkserver() -> _ForkServer:
    global _forkserver
    with _forkserver_lock:
        if _forkserver is None or not _forkserver.alive():
            if _forkserver is not None:
                _forkserver.shutdown()
            _forkserver = _ForkServer()
        return _forkserver


def shutdown_forkserver() -> None:
    """Stop the fork server, if one runs (at interpreter exit, or in tests)."""
    global _forkserver
    with _forkserver_lock:
        if _forkserver is not None:
            _forkserver.shutdown()
            _forkserver = None
