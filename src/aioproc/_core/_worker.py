"""The worker process: a lean loop that runs tasks sent by the parent's dispatcher.

Data flow::

    parent (dispatcher)                               worker (this module)
    ───────────────────                               ────────────────────
    task pipe   ── Config, Define, Call, Cancel, ──▶  read ─▶ decode ─▶ run fn ─┐
                   Ack, Drop, Stop                                             │
    result pipe ◀── Ready, Done, Failed, Item, End, ◀── encode ◀───────────────┘
                    Output, Log, InitFailed                ▲
                                                           └── print(), sys.stderr, logging

The first frame on the task pipe is always a ``Config``. Results that are ready at the same
time leave in one ``write``: the loop flushes only when it has run everything it has read.

Invariants:
- The worker never outlives its parent. A watcher thread polls the task pipe for POLLHUP,
  which only happens when every writer is gone; the parent keeps its end open until the
  worker has been reaped, so a hang-up means the parent died, and the watcher kills the
  worker's whole process group (the worker leads one), grandchildren included.
- Everything the worker writes to the result pipe is a whole frame: ``sys.stdout``,
  ``sys.stderr`` and logging records are wrapped into frames, under one lock shared with the
  result path, so user output can never corrupt the channel.
- SIGINT is ignored: Ctrl-C belongs to the parent, which cancels or closes the pool.

The running of calls (modes, map chunks, streams, ``max_tasks``) is in ``_exec.py``, shared
with the asyncio loop of ``_worker_async.py`` that a worker with ``concurrency > 1`` runs
instead of :meth:`Worker.serve`. Its tunables are there.
"""

from __future__ import annotations

import _thread
import io
import logging
import os
import pickle
import select
import signal
import sys
import traceback
from inspect import iscoroutine
from typing import Any, NoReturn

from .._exceptions import SerializationError
from . import _codec, _exec, _role, _wire

# Exit status of a worker whose initializer failed. The parent does not read it: the
# InitFailed frame sent just before tells it why (and keeps it from respawning); the status
# only shows the failure to whoever looks at exit codes.
EXIT_INIT_FAILED = 3


class _ForwardRaw(io.RawIOBase):
    """What the worker's ``sys.stdout``/``sys.stderr`` write ends up in: Output frames."""

    def __init__(self, channel: _exec.Channel, fd: int) -> None:
        super().__init__()
        self._channel = channel
        self._fd = fd

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        if data:
            self._channel.send(_wire.Output(self._fd, data))
        return len(data)

    def fileno(self) -> int:
        # Code that asks for the fd (faulthandler, subprocess) gets the real one.
        return self._fd


def _forward_stream(channel: _exec.Channel, fd: int, like: Any) -> io.TextIOWrapper:
    encoding = getattr(like, "encoding", None) or "utf-8"
    raw = _ForwardRaw(channel, fd)
    return io.TextIOWrapper(
        io.BufferedWriter(raw, 1 << 16),
        encoding=encoding,
        errors="backslashreplace",
        line_buffering=True,
    )


class _LogForward(logging.Handler):
    """Sends each record to the parent, which hands it to the logger of the same name."""

    def __init__(self, channel: _exec.Channel) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            attrs = dict(record.__dict__)
            attrs["msg"] = record.getMessage()
            attrs["args"] = None
            if record.exc_info:
                attrs["exc_text"] = logging.Formatter().formatException(record.exc_info)
            attrs["exc_info"] = None
            try:
                blob = pickle.dumps(attrs, _codec.PROTOCOL)
            except Exception:  # a record's extra attributes are the user's: anything may fail
                blob = pickle.dumps(
                    {
                        k: v if isinstance(v, int | float | str | None) else repr(v)
                        for k, v in attrs.items()
                    },
                    _codec.PROTOCOL,
                )
            self._channel.send(_wire.Log(blob))
        except Exception:  # as logging.Handler.emit does: the record holds the user's objects
            self.handleError(record)


def _watch_parent(task_fd: int) -> None:
    """Kill this worker's process group when the parent goes away."""
    poller = select.poll()
    poller.register(task_fd, 0)  # no events asked: wakes only for POLLHUP / POLLERR
    while True:
        try:
            if poller.poll():
                break
        except InterruptedError:  # pragma: no cover - poll retries on EINTR since 3.5
            continue
    try:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    finally:
        os._exit(1)


class Worker(_exec.Executor):
    """One worker process on the blocking loop; ``serve()`` never returns."""

    # --- set-up -------------------------------------------------------------------------

    def configure(self, config: _wire.Config) -> None:
        if config.cwd:
            try:
                os.chdir(config.cwd)
            except OSError:
                pass
        sys.path[:] = [os.fsdecode(p) for p in config.sys_path]
        if config.env is not None:
            # A forked-by-server worker inherited the server's environment, which may be
            # older than the parent's: take the parent's as it is now.
            os.environb.clear()
            os.environb.update(config.env)
        _role.in_worker = True
        if config.hub:
            _role.set_default(config.hub, config.hub_key)
        self.max_tasks = config.max_tasks
        self.process = config.process
        self.concurrency = config.concurrency
        sys.stdout = _forward_stream(self.channel, 1, sys.__stdout__)
        sys.stderr = _forward_stream(self.channel, 2, sys.__stderr__)
        root = logging.getLogger()
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        root.addHandler(_LogForward(self.channel))
        root.setLevel(config.log_level)
        if config.init:
            try:
                initializer, initargs = _codec.loads(config.init)
                result = self.main.adopt(initializer)(*initargs)
                if iscoroutine(result):
                    self.run_coroutine(result)
            except BaseException as exc:
                self.flush_output()
                self.channel.send(_wire.InitFailed(_codec.dumps_error(exc)))
                os._exit(EXIT_INIT_FAILED)
        self.flush_output()
        self.channel.send(_wire.Ready(os.getpid()))

    # --- reading --------------------------------------------------------------------------

    def read(self) -> bool:
        """Block until frames arrive; queue them in the inbox. False at end of input."""
        while True:
            try:
                data = os.read(self.task_fd, _exec.READ_SIZE)
            except BlockingIOError:
                select.select([self.task_fd], [], [])
                continue
            if not data:
                self.eof = True
                return False
            msgs = self.reader.feed(data)
            if msgs:
                for msg in msgs:
                    if isinstance(msg, _wire.Cancel):
                        # Seen before the Call runs: the call is skipped.
                        self.cancelled.add(msg.id)
                    else:
                        self.inbox.append(msg)
                return True

    def serve(self) -> NoReturn:
        inbox = self.inbox
        channel = self.channel
        poller = select.poll()
        poller.register(self.task_fd, select.POLLIN)
        stop = False  # handle() sets self.stopping: a Stop frame, or max_tasks reached
        while not stop:
            if not inbox and not self.read():
                break
            fresh = True
            while inbox:
                msg = inbox.popleft()
                if not fresh and isinstance(msg, _wire.Call):
                    # Whatever the last call produced leaves before the next one starts:
                    # if that one kills the process (os._exit, a segfault, SIGKILL), the
                    # results of the tasks before it are not lost with it.
                    channel.flush()
                    if poller.poll(0):
                        # A call the parent sent ahead while we were busy: a Cancel for
                        # it may be in the pipe by now. One poll() per such call keeps a
                        # cancelled task from starting.
                        self.read()
                fresh = False
                reply = self.handle(msg)
                if reply is not None:
                    self.put_reply(reply)
                stop = self.stopping
                if stop:
                    break
            channel.flush()
        self.exit(self.exit_code)


def run(task_fd: int, result_fd: int) -> NoReturn:
    """Become a worker on these two pipe ends; never returns."""
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # pragma: no cover - not the main thread
        pass
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
    except OSError:
        pass
    os.set_blocking(task_fd, True)
    os.set_blocking(result_fd, True)
    worker = Worker(task_fd, result_fd)
    # A bare thread: threading.Thread.start() would wait until the thread runs, a hand-over
    # of the GIL (and, on a busy machine, of a CPU) before the worker may read its Config.
    _thread.start_new_thread(_watch_parent, (task_fd,))
    try:
        while not worker.inbox:
            if not worker.read():
                os._exit(0)
        config = worker.inbox.popleft()
        if not isinstance(config, _wire.Config):
            raise SerializationError(f"expected Config first, got {type(config).__name__}")
        worker.configure(config)
        if worker.concurrency > 1:
            # Here: it imports asyncio (and uvloop), which a blocking worker never loads.
            from ._worker_async import serve_async

            serve_async(worker)
        worker.serve()
    except SystemExit as exc:  # pragma: no cover - defensive
        worker.exit(exc.code if isinstance(exc.code, int) else 1)
    except BaseException:
        traceback.print_exc(file=sys.__stderr__)
        os._exit(1)


def main() -> NoReturn:
    """Entry point of ``python -m aioproc._core._worker TASK_FD RESULT_FD`` (spawn)."""
    run(int(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    main()
