"""One worker process as the parent sees it: its two pipes and the bytes in between.

::

    encode(msg) ──▶ outbuf ──flush(): one write──▶ task pipe ──▶ worker
                       └── rest, when the pipe is full: written on writability
    read(): bytes ◀── result pipe ◀── worker      (framed by ``reader``)

``WorkerLink`` knows nothing of jobs or scheduling: the dispatcher's ``_Worker`` adds those
on top (see ``_dispatch.py``). Everything here runs on the event loop thread.

Invariants:
- ``task_fd`` and ``result_fd`` stay open, and registered with ``_fds.register_fds`` (so
  forked children close them), until ``close()``; after it ``closed`` is set and the
  numbers are never used again: a late loop callback finds ``closed`` and does nothing.
- The parent keeps the task pipe open until the worker has been reaped: for the worker a
  hang-up there means the parent died (see ``_worker.py``).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from . import _fds, _wire

if TYPE_CHECKING:
    from ._loop import Backend
    from ._spawn import ProcessHandle

__all__ = ("READ_SIZE", "WorkerLink")

READ_SIZE = 1 << 18  # bytes read per wake-up: a burst of results in one read


class WorkerLink:
    """The pipes to one worker process and its write buffer."""

    __slots__ = (
        "closed",
        "flush_pending",
        "outbuf",
        "pid",
        "proc",
        "reader",
        "result_fd",
        "task_fd",
        "writing",
    )

    def __init__(self, proc: ProcessHandle, task_fd: int, result_fd: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.reader = _wire.FrameReader()
        self.outbuf = bytearray()
        # Invariant: True exactly while a writer callback is registered for task_fd.
        self.writing = False
        self.flush_pending = False  # on the dispatcher's list of links to flush this turn
        self.closed = False

    def send(self, msg: _wire.Message) -> None:
        """Append ``msg`` to the write buffer (written by the next ``flush``)."""
        _wire.encode_into(msg, self.outbuf)

    def flush(self, backend: Backend) -> None:
        """Write what the buffer holds: now what the pipe takes, the rest when it has room."""
        self.flush_pending = False
        buf = self.outbuf
        if self.closed:
            buf.clear()  # its task fd is closed; the number may be reused already
            return
        if not buf or self.writing:
            return
        self._write()
        if buf:
            self.writing = True
            backend.add_writer(self.task_fd, lambda: self._on_writable(backend))

    def _on_writable(self, backend: Backend) -> None:
        if self.closed:
            return
        self._write()
        if not self.outbuf:
            self.writing = False
            backend.remove_writer(self.task_fd)

    def _write(self) -> None:
        buf = self.outbuf
        try:
            n = os.write(self.task_fd, buf)
        except BlockingIOError:
            return
        except OSError:
            # The worker is gone: its sentinel will fire and settle its jobs.
            buf.clear()
            return
        del buf[:n]

    def read(self) -> bytes | None:
        """What the result pipe holds: None if nothing yet, ``b""`` at its end."""
        try:
            return os.read(self.result_fd, READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def close(self, backend: Backend | None) -> None:
        """Close the pipes (the worker has been reaped), first unwatching them on ``backend``.

        ``backend`` is None where its loop may not be touched: at interpreter exit, from the
        garbage collector, or once the loop has ended. The process's sentinel is not
        touched: the dispatcher unwatches it before reaping, which closes it.
        """
        if self.closed:
            return
        self.closed = True
        if backend is not None:
            # A loop closed meanwhile raises RuntimeError (uvloop); asyncio ignores it.
            with contextlib.suppress(RuntimeError):
                backend.remove_reader(self.result_fd)
            if self.writing:
                with contextlib.suppress(RuntimeError):
                    backend.remove_writer(self.task_fd)
        self.writing = False
        _fds.unregister_fds(self.task_fd, self.result_fd)
        for fd in (self.task_fd, self.result_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
