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

Tunables:
- ``_READ_SIZE``: bytes asked per ``read``; large enough that a burst of small tasks is one
  syscall, small enough that the buffer stays below malloc's mmap threshold.
- ``STREAM_WINDOW``: items a generator may run ahead of the parent's consumer. Larger windows
  hide pipe latency; smaller ones bound the parent's memory for a slow consumer.
- ``PARTIAL_EVERY``: how long the finished results of a map chunk may wait in the worker
  before they leave (see ``_Partials``). Tiny items still travel thousands to a message;
  slow ones come back about as they finish.
"""

from __future__ import annotations

import collections
import io
import itertools
import logging
import os
import select
import signal
import sys
import threading
import time
from inspect import isasyncgen, iscoroutine, isgenerator
from types import FunctionType
from typing import TYPE_CHECKING, Any, NoReturn

from .._exceptions import SerializationError
from . import _client, _codec, _role, _wire

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

_READ_SIZE = 1 << 16
STREAM_WINDOW = 64
PARTIAL_EVERY = 0.005
_PARTIALS_LINGER = 25  # rounds of PARTIAL_EVERY the partials thread stays awake when idle
_PARTIALS_PAUSE_MAX = 0.032  # longest pause of the partials thread while a chunk runs
# Map items run in slices once they prove tiny (see Worker.fill).
_TINY = 20e-6  # seconds: an item under this counts as tiny
_TINY_RUN = 16  # tiny items in a row before slices start, and the first slice's size
_SLICE_TIME = 0.0005  # slices double while one takes less than this
_MAX_SLICE = 8192

# Exit status the parent reads as "the initializer failed", so it does not respawn forever.
EXIT_INIT_FAILED = 3


class _Channel:
    """The result pipe: whole frames only, from any thread."""

    __slots__ = ("_buf", "_fd", "_lock")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()
        self._lock = threading.Lock()

    def put(self, msg: _wire.Message) -> None:
        with self._lock:
            _wire.encode_into(msg, self._buf)

    def flush(self) -> None:
        with self._lock:
            buf = self._buf
            while buf:
                n = os.write(self._fd, buf)
                del buf[:n]

    def send(self, msg: _wire.Message) -> None:
        with self._lock:
            buf = self._buf
            _wire.encode_into(msg, buf)
            while buf:
                n = os.write(self._fd, buf)
                del buf[:n]


class _ForwardRaw(io.RawIOBase):
    """What the worker's ``sys.stdout``/``sys.stderr`` write ends up in: Output frames."""

    def __init__(self, channel: _Channel, fd: int) -> None:
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


def _forward_stream(channel: _Channel, fd: int, like: Any) -> io.TextIOWrapper:
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

    def __init__(self, channel: _Channel) -> None:
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
                blob = _codec._pickle_dumps(attrs, 5)
            except Exception:
                blob = _codec._pickle_dumps(
                    {
                        k: v if isinstance(v, int | float | str | None) else repr(v)
                        for k, v in attrs.items()
                    },
                    5,
                )
            self._channel.send(_wire.Log(blob))
        except Exception:
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


def flush_hub() -> None:
    """Write what this process posted to the IPC hub and has not sent yet."""
    _client.flush_clients()


class _Partials:
    """The results of the map chunks running now, sent ahead in batches bounded by time.

    A chunk adds each result to the list ``begin`` gives it, which holds only what has
    not been sent, and sends what the list holds (``send_now``, one ``Item`` frame) after
    an item once ``PARTIAL_EVERY`` has passed since the last batch: many tiny results share
    a message, slow ones leave one by one. A result must not wait for the items after it
    either, however long one of them runs: a thread wakes while a chunk runs and sends what
    has waited ``PARTIAL_EVERY``. Each of its rounds takes the GIL from the running code,
    so it pauses longer (up to ``_PARTIALS_PAUSE_MAX``) while it finds nothing to do.

    The running code only adds to the end of a list, and a send only takes from its
    front, each step atomic under the GIL, so adding needs no lock; ``lock`` keeps a batch
    from leaving after the chunk's final reply, which carries whatever ``end`` returns.
    While an item holds the GIL, the thread gets it within the interpreter's switch
    interval (5 ms).
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.lock = threading.Lock()
        self.running: dict[int, list[Any]] = {}  # task id -> its results not sent yet
        self.halted: set[int] = set()  # a batch failed to pickle: the final reply says why
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        # time.perf_counter() of the last batch sent, or of the last chunk's start
        self.last_send = 0.0
        # A task that forks must not leave its child a lock held by this thread (the
        # child's first print would wait on it forever).
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork_in_parent,
            after_in_child=self._after_fork_in_child,
        )

    def _before_fork(self) -> None:
        self.lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self.lock.release()

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.running.clear()
        self.halted.clear()
        self.thread = None

    def begin(self, task_id: int) -> list[Any]:
        results: list[Any] = []
        with self.lock:
            self.running[task_id] = results
        self.last_send = time.perf_counter()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="aioproc-partials", daemon=True)
            self.thread.start()
        if not self.wake.is_set():
            self.wake.set()
        return results

    def end(self, task_id: int) -> list[Any]:
        """No more batches for ``task_id``; return its results not sent yet."""
        with self.lock:
            self.halted.discard(task_id)
            return self.running.pop(task_id)

    def send_now(self, task_id: int) -> None:
        """Send the results ``task_id`` has so far, from the thread that runs it.

        For a chunk's first result: the first result of a map never waits for the thread
        (nor for the GIL, which the items after it may hold for a switch interval).
        """
        with self.lock:
            results = self.running[task_id]
            if results and task_id not in self.halted:
                self._send(task_id, results, own_thread=True)

    def _run(self) -> None:
        idle = 0  # rounds in a row with no chunk running
        pause = PARTIAL_EVERY
        while True:
            self.wake.wait()
            time.sleep(pause)
            with self.lock:
                if not self.running:
                    # Back-to-back chunks find the thread awake: waking it costs the chunk
                    # a hand-over of the GIL. An idle worker lets it sleep until begin()
                    # sets the event again (after taking the lock).
                    idle += 1
                    if idle >= _PARTIALS_LINGER:
                        self.wake.clear()
                        idle = 0
                    pause = PARTIAL_EVERY
                    continue
                idle = 0
                sent = False
                if time.perf_counter() - self.last_send >= PARTIAL_EVERY:
                    for task_id, results in self.running.items():
                        if results and task_id not in self.halted:
                            self._send(task_id, results, own_thread=False)
                            sent = True
                # Each round takes the GIL from the code running the chunk (on a busy
                # machine, it may then wait for a CPU): rounds space out while the chunk's
                # own thread does the sending, or while nothing has finished.
                pause = PARTIAL_EVERY if sent else min(pause * 2, _PARTIALS_PAUSE_MAX)

    def _send(self, task_id: int, results: list[Any], *, own_thread: bool) -> None:
        count = len(results)
        try:
            msg = _wire.Item(task_id, _codec.dumps_result(results[:count]))
            # What the items posted to the IPC hub (and, from the thread that runs them,
            # printed) leaves before their results. From the partials thread, sys.stdout
            # is left alone: a text stream is not safe to flush while another thread
            # writes to it, and it sends each whole line as it is printed anyway.
            if own_thread:
                self.worker.flush_output()
            else:
                flush_hub()
            self.worker.channel.send(msg)
        except OSError:
            return  # the parent is gone: the watcher thread ends this process
        except BaseException:
            # A result that does not pickle (or not now: the running item is changing it):
            # the chunk's final reply sends these results, or the error that names them.
            self.halted.add(task_id)
            return
        self.last_send = time.perf_counter()
        # Sent: the first ``count`` are still those (the chunk only adds at the end), and
        # the worker need not keep them until the chunk ends (large results would pile up).
        del results[:count]


class Worker:
    """State of one worker process; ``serve()`` never returns."""

    def __init__(self, task_fd: int, result_fd: int) -> None:
        self.task_fd = task_fd
        self.channel = _Channel(result_fd)
        self.reader = _wire.FrameReader()
        self.inbox: collections.deque[_wire.Message] = collections.deque()
        self.functions: dict[int, Callable[..., Any]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.max_tasks = 0
        self.done = 0
        self.process = False
        self.exit_code = 0
        self.concurrency = 1
        self.stopping = False
        self.eof = False
        self.cancelled: set[int] = set()
        self.main = MainNamespace()
        self.partials = _Partials(self)

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
                data = os.read(self.task_fd, _READ_SIZE)
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

    # --- running --------------------------------------------------------------------------

    def event_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            try:
                import uvloop

                self.loop = uvloop.new_event_loop()
            except ImportError:
                import asyncio

                self.loop = asyncio.new_event_loop()
        return self.loop

    def run_coroutine(self, coro: Any) -> Any:
        return self.event_loop().run_until_complete(coro)

    def flush_output(self) -> None:
        """Send what the task printed, and what it posted to the IPC hub, before its result.

        The parent may act on the result at once (close a queue the task filled): the
        task's puts must already be on their way to the hub by then.
        """
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        _client.flush_clients()

    def call(self, msg: _wire.Call) -> _wire.Message | None:
        """Run one Call; return the frame that answers it (None for streams, which reply
        as they go)."""
        try:
            fn = self.functions[msg.fn]
            mode = msg.mode
            payload = load_payload(msg.args)
            if mode == _wire.MODE_CALL:
                args, kwargs = payload
                result = fn(*args, **kwargs) if kwargs else fn(*args)
                if iscoroutine(result):
                    result = self.run_coroutine(result)
            elif mode == _wire.MODE_MAP or mode == _wire.MODE_STARMAP:
                return self.run_chunk(msg, fn, payload)
            else:
                args, kwargs = payload
                self.stream(msg.id, fn(*args, **(kwargs or {})))
                return None
        except BaseException as exc:
            if self.process:
                self.exit_code = _exit_status(exc)
            self.flush_output()
            return _wire.Failed(msg.id, _codec.dumps_error(exc))
        self.flush_output()
        return answer(msg.id, result)

    def run_chunk(self, msg: _wire.Call, fn: Callable[..., Any], items: list[Any]) -> _wire.Message:
        """Run a map chunk from item ``msg.skip`` on; its results leave as they finish.

        The reply carries the results not sent yet. If an item raises, the results before
        it are still delivered, then the failure.
        """
        results = self.partials.begin(msg.id)
        try:
            self.fill(fn, items[msg.skip :] if msg.skip else items, msg, results)
        except BaseException as exc:
            self.flush_output()
            self.put_leftover(msg.id, self.partials.end(msg.id))
            return _wire.Failed(msg.id, _codec.dumps_error(exc))
        rest = self.partials.end(msg.id)
        self.flush_output()
        return answer(msg.id, rest)

    def fill(
        self, fn: Callable[..., Any], items: list[Any], msg: _wire.Call, out: list[Any]
    ) -> None:
        """Append ``fn``'s result for each item to ``out`` (``fn(*item)`` for starmap).

        Each result joins ``out``, where the partials thread sees it, as soon as it is
        made; the first one leaves at once unless its item was tiny. Tiny items are the
        exception: once ``_TINY_RUN`` items in a row took under ``_TINY`` each, they run in
        slices, one list comprehension each (the fastest loop there is, some 15% faster
        than appending item by item), and a slice's results join together. Slices double
        while one takes under ``_SLICE_TIME``; a slice whose items average over ``_TINY``
        sends the loop back to one item at a time. So only a slice's worth of tiny results
        (about a millisecond of work at most) can wait for a slow item that follows them
        in the slice, and if an item of a slice raises, the results of the items before it
        in that slice are lost with the comprehension (the chunk fails anyway).
        """
        n = len(items)
        if not n:
            return  # a retried chunk whose results had all arrived
        star = msg.mode == _wire.MODE_STARMAP
        clock = time.perf_counter
        first = items[0]
        start = clock()
        value = fn(*first) if star else fn(first)
        if iscoroutine(value):
            run = self.run_coroutine
            out.append(run(value))
            if n > 1:
                self.partials.send_now(msg.id)
            for x in itertools.islice(items, 1, None):
                out.append(run(fn(*x) if star else fn(x)))
            return
        out.append(value)
        fast = 1 if clock() - start < _TINY else 0
        if n > 1 and not fast:
            # Not a tiny item: its result leaves now rather than with the thread's next
            # round. (A tiny one waits for that round: most chunks of tiny items are over
            # by then, and their results leave in one message.)
            self.partials.send_now(msg.id)
        partials = self.partials
        append = out.append
        i, size = 1, 1
        while i < n:
            if size == 1:
                x = items[i]
                start = clock()
                append(fn(*x) if star else fn(x))
                i += 1
                now = clock()
                if now - start < _TINY:
                    fast += 1
                    if fast >= _TINY_RUN:
                        size = _TINY_RUN
                else:
                    fast = 0
            else:
                part = items[i : i + size]
                start = clock()
                out += [fn(*x) for x in part] if star else [fn(x) for x in part]
                i += size
                now = clock()
                spent = now - start
                if spent > _TINY * len(part):
                    size, fast = 1, 0
                elif spent < _SLICE_TIME and size < _MAX_SLICE:
                    size *= 2
            if now - partials.last_send >= PARTIAL_EVERY and i < n:
                # This thread sends while it makes progress: the partials thread, which
                # would have to take the GIL from it, is only for an item that runs long.
                partials.send_now(msg.id)

    def put_leftover(self, task_id: int, results: list[Any]) -> None:
        """Queue the results a failed chunk made before its failure (if they can be sent)."""
        if results:
            try:
                self.channel.put(_wire.Item(task_id, _codec.dumps_result(results)))
            except BaseException:
                pass  # the failure itself is what the chunk reports

    def stream(self, task_id: int, gen: Any) -> None:
        """Send each item of a (async) generator as it is yielded, within the credit window."""
        check_generator(gen)
        if isasyncgen(gen):
            loop = self.event_loop()
            agen = gen

            def next_item() -> Any:
                return loop.run_until_complete(agen.__anext__())

            stop: type[BaseException] = StopAsyncIteration
        elif isgenerator(gen) or hasattr(gen, "__next__"):
            next_item = gen.__next__
            stop = StopIteration
        else:
            raise TypeError(f"stream() needs a generator function; got a {_codec.type_name(gen)!r}")
        credit = STREAM_WINDOW
        channel = self.channel
        while True:
            try:
                item = next_item()
            except stop:
                break
            self.flush_output()
            channel.send(_wire.Item(task_id, _codec.dumps(item)))
            credit -= 1
            while credit <= 0:
                credit += self.wait_credit(task_id)
        self.flush_output()
        channel.send(_wire.End(task_id))

    def wait_credit(self, task_id: int) -> int:
        """Block for an Ack of stream ``task_id``; park other frames for later."""
        while True:
            for index, msg in enumerate(self.inbox):
                if isinstance(msg, _wire.Ack) and msg.id == task_id:
                    del self.inbox[index]
                    return msg.n
            if not self.read():
                os._exit(0)

    def handle(self, msg: _wire.Message) -> _wire.Message | None:
        if isinstance(msg, _wire.Call):
            self.done += 1  # skipped or run, as the parent counts it for max_tasks
            if self.cancelled and msg.id in self.cancelled:
                self.cancelled.discard(msg.id)
                return None
            return self.call(msg)
        if isinstance(msg, _wire.Define):
            try:
                self.functions[msg.fn] = self.main.adopt(_codec.loads(msg.blob))
            except BaseException as exc:
                self.functions[msg.fn] = _Unloadable(exc)
            return None
        if isinstance(msg, _wire.Drop):
            self.functions.pop(msg.fn, None)
            return None
        if isinstance(msg, _wire.Stop):
            self.stopping = True
        # Ack for a finished stream, Cancel outside async mode: nothing to do.
        return None

    def must_stop(self) -> bool:
        # A method, not the attribute: handle() sets it behind the type checker's back.
        return self.stopping

    def serve(self) -> NoReturn:
        inbox = self.inbox
        channel = self.channel
        poller = select.poll()
        poller.register(self.task_fd, select.POLLIN)
        while not self.stopping:
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
                    try:
                        channel.put(reply)
                    except SerializationError as exc:
                        assert isinstance(reply, _wire.Done)
                        channel.put(_wire.Failed(reply.id, _codec.dumps_error(exc)))
                if self.max_tasks and self.done >= self.max_tasks:
                    self.stopping = True
                if self.must_stop():
                    break
            channel.flush()
        self.exit(self.exit_code)

    def exit(self, code: int) -> NoReturn:
        self.flush_output()
        try:
            self.channel.flush()
        except OSError:
            pass
        # Take whatever the tasks started with us.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            os.killpg(os.getpgrp(), signal.SIGTERM)
        except OSError:
            pass
        os._exit(code)


class MainNamespace:
    """One global namespace for every function of the parent's ``__main__``.

    Such functions arrive by value, and cloudpickle gives each pickle its own copy of the
    globals they use. Rebinding them to one shared dict restores what a script expects:
    a global set by the initializer (or by one task) is seen by the next task.
    """

    def __init__(self) -> None:
        self.globals: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}

    def adopt(self, fn: Any) -> Any:
        if not isinstance(fn, FunctionType):
            return fn
        own = fn.__globals__
        if own is self.globals or own.get("__name__") != "__main__":
            return fn
        shared = self.globals
        rebound: dict[int, FunctionType] = {}

        def rebind(f: FunctionType) -> FunctionType:
            new = rebound.get(id(f))
            if new is None:
                new = FunctionType(f.__code__, shared, f.__name__, f.__defaults__, f.__closure__)
                new.__kwdefaults__ = f.__kwdefaults__
                new.__qualname__ = f.__qualname__
                new.__dict__.update(f.__dict__)
                rebound[id(f)] = new
            return new

        for name, value in own.items():
            if name in shared:
                continue  # first come wins: a value set in the worker is not reset
            if isinstance(value, FunctionType) and value.__globals__ is own:
                value = rebind(value)
            shared[name] = value
        return rebind(fn)


def _exit_status(exc: BaseException) -> int:
    """The exit status of a process whose target raised ``exc``, as Python's own."""
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    # As multiprocessing does for a Process: show the traceback where its output goes.
    import traceback

    print(f"Process {os.getpid()}:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
    return 1


def load_payload(blob: bytes) -> Any:
    """Unpickle a call's arguments; a failure is the task's SerializationError."""
    try:
        return _codec.loads_any(blob)
    except BaseException as exc:
        raise SerializationError(f"cannot rebuild the arguments in the worker: {exc!r}") from exc


def answer(task_id: int, result: Any) -> _wire.Message:
    """The frame that carries ``result`` back, or the error saying why it cannot."""
    try:
        return _wire.Done(task_id, _codec.dumps_result(result))
    except BaseException as exc:
        reason = exc.__cause__ if isinstance(exc, SerializationError) else exc
        err = SerializationError(
            f"cannot send the result of type {_codec.type_name(result)!r} back: {reason}"
        )
        return _wire.Failed(task_id, _codec.dumps_error(err))


def check_generator(gen: Any) -> None:
    if not (isgenerator(gen) or isasyncgen(gen) or hasattr(gen, "__next__")):
        raise TypeError(f"stream() needs a generator function; got a {_codec.type_name(gen)!r}")


class _Unloadable:
    """Stands in for a function that failed to unpickle: calling it raises why."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self, *args: object, **kwargs: object) -> NoReturn:
        raise SerializationError(
            f"cannot rebuild the function in the worker: {self.exc!r}"
        ) from self.exc


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
    threading.Thread(target=_watch_parent, args=(task_fd,), daemon=True).start()
    try:
        while not worker.inbox:
            if not worker.read():
                os._exit(0)
        config = worker.inbox.popleft()
        if not isinstance(config, _wire.Config):
            raise SerializationError(f"expected Config first, got {type(config).__name__}")
        worker.configure(config)
        if worker.concurrency > 1:
            from ._aworker import serve_async

            serve_async(worker)
        worker.serve()
    except SystemExit as exc:  # pragma: no cover - defensive
        worker.exit(exc.code if isinstance(exc.code, int) else 1)
    except BaseException:
        import traceback

        traceback.print_exc(file=sys.__stderr__)
        os._exit(1)


def main() -> NoReturn:
    """Entry point of ``python -m aioproc._core._worker TASK_FD RESULT_FD`` (spawn)."""
    run(int(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    main()
