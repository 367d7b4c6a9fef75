"""Running calls in a worker: what the blocking loop and the asyncio loop share.

A worker process runs one of two loops over the same state, an :class:`Executor`: the
blocking loop (``_worker.Worker.serve``) for ``concurrency == 1``, which runs each call here
(:meth:`Executor.call`), and the asyncio loop (``_worker_async``) for ``concurrency > 1``,
which awaits coroutines itself and uses the parts: the function table, :func:`load_payload`,
:func:`answer`, :meth:`Executor.put_reply`, :meth:`Executor.count_call`, the partial results
of map chunks (:class:`_Partials`) and the output flush.

Frames come in on the task pipe (``inbox``) and replies leave on the result pipe
(:class:`Channel`); nothing here reads the task pipe, which is the loop's job.

Invariants:
- Every ``Call`` counts once towards ``max_tasks`` (:meth:`Executor.count_call`), run or
  skipped as cancelled, as the parent counts it: both stop at the same number.
- A result that cannot be sent becomes the task's ``SerializationError``
  (:func:`answer`, :meth:`Executor.put_reply`); the worker goes on.
- What a task printed and posted to the IPC hub leaves before its result
  (:meth:`Executor.flush_output`).

Tunables:
- ``READ_SIZE``: bytes asked per ``read`` of the task pipe; large enough that a burst of
  small tasks is one syscall, small enough that the buffer stays below malloc's mmap
  threshold.
- ``_wire.STREAM_WINDOW``: items a generator may run ahead of the parent's consumer (in
  ``_wire``: the parent's Acks are sized by it). Larger windows hide pipe latency; smaller
  ones bound the parent's memory for a slow consumer.
- ``PARTIAL_EVERY``: how long the finished results of a map chunk may wait in the worker
  before they leave (see ``_Partials``). Tiny items still travel thousands to a message;
  slow ones come back about as they finish.
"""

from __future__ import annotations

import collections
import itertools
import os
import signal
import sys
import threading
import time
import traceback
from inspect import isasyncgen, iscoroutine, isgenerator
from types import FunctionType
from typing import TYPE_CHECKING, Any, NoReturn

from .._exceptions import SerializationError
from . import _client, _codec, _payload, _wire

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

__all__ = (
    "PARTIAL_EVERY",
    "READ_SIZE",
    "Channel",
    "Executor",
    "answer",
    "check_generator",
    "load_payload",
)

READ_SIZE = 1 << 16
PARTIAL_EVERY = 0.005
_PARTIALS_LINGER = 25  # rounds of PARTIAL_EVERY the partials thread stays awake when idle
_PARTIALS_PAUSE_MAX = 0.032  # longest pause of the partials thread while a chunk runs
# Map items run in slices once they prove tiny (see Executor.fill).
_TINY = 20e-6  # seconds: an item under this counts as tiny
_TINY_RUN = 16  # tiny items in a row before slices start, and the first slice's size
_SLICE_TIME = 0.0005  # slices double while one takes less than this
_MAX_SLICE = 8192


class Channel:
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

    def __init__(self, worker: Executor) -> None:
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
            msg = _wire.Item(task_id, _payload.dumps_result(results[:count]))
            # What the items posted to the IPC hub (and, from the thread that runs them,
            # printed) leaves before their results. From the partials thread, sys.stdout
            # is left alone: a text stream is not safe to flush while another thread
            # writes to it, and it sends each whole line as it is printed anyway.
            if own_thread:
                self.worker.flush_output()
            else:
                _client.flush_clients()
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


class Executor:
    """The state of one worker process, and the running of its calls."""

    def __init__(self, task_fd: int, result_fd: int) -> None:
        self.task_fd = task_fd
        self.channel = Channel(result_fd)
        self.reader = _wire.FrameReader()
        self.inbox: collections.deque[_wire.Message] = collections.deque()
        self.functions: dict[int, Callable[..., Any]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.max_tasks = 0
        self.done = 0  # calls counted towards max_tasks
        self.process = False
        self.exit_code = 0
        self.concurrency = 1
        self.stopping = False
        self.eof = False
        self.cancelled: set[int] = set()
        self.main = MainNamespace()
        self.partials = _Partials(self)

    def count_call(self) -> None:
        """Count a call towards ``max_tasks`` (run or skipped, as the parent counts it)."""
        self.done += 1
        if self.max_tasks and self.done >= self.max_tasks:
            self.stopping = True

    def put_reply(self, reply: _wire.Message) -> None:
        """Queue ``reply``; a result too large for a frame fails its task instead."""
        try:
            self.channel.put(reply)
        except SerializationError as exc:
            assert isinstance(reply, _wire.Done)
            self.channel.put(_wire.Failed(reply.id, _codec.dumps_error(exc)))

    # --- running (the blocking loop's; the async loop uses the parts) -------------------

    def event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop coroutine tasks run on, made on first use (uvloop's if installed)."""
        if self.loop is None:
            # Here: a worker whose tasks are all plain functions never loads asyncio.
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
            except Exception:  # the user may have replaced the stream with anything
                pass
        _client.flush_clients()

    def call(self, msg: _wire.Call) -> _wire.Message | None:
        """Run one Call; return the frame that answers it (None for streams, which reply
        as they go)."""
        loan = None
        try:
            try:
                fn = self.functions[msg.fn]
                mode = msg.mode
                payload, loan = load_payload(msg.args)
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
        finally:
            if loan is not None:
                _payload.end_loan(loan)  # the result is pickled by now (or never will be)

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
                self.channel.put(_wire.Item(task_id, _payload.dumps_result(results)))
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
        else:  # a generator, or an iterator (check_generator let nothing else through)
            next_item = gen.__next__
            stop = StopIteration
        credit = _wire.STREAM_WINDOW
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

    def read(self) -> bool:
        """Block until frames arrive and queue them in ``inbox``; False at end of input.

        The blocking loop's (``_worker.Worker``); a stream waiting for credit calls it.
        """
        raise NotImplementedError

    def handle(self, msg: _wire.Message) -> _wire.Message | None:
        """Act on one frame of the blocking loop; return the reply to send, if any."""
        if isinstance(msg, _wire.Call):
            self.count_call()
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
    print(f"Process {os.getpid()}:", file=sys.stderr)
    traceback.print_exception(exc, file=sys.stderr)
    return 1


def load_payload(blob: bytes) -> tuple[Any, _payload.Loan | None]:
    """Unpickle a call's arguments; a failure is the task's SerializationError.

    Returns:
        the arguments, and what of them the call's results may refer to instead of
        copying it (give it to ``_payload.end_loan`` once they are pickled).
    """
    try:
        return _payload.loads_lent(blob)
    except BaseException as exc:
        raise SerializationError(f"cannot rebuild the arguments in the worker: {exc!r}") from exc


def answer(task_id: int, result: Any) -> _wire.Message:
    """The frame that carries ``result`` back, or the error saying why it cannot."""
    try:
        return _wire.Done(task_id, _payload.dumps_result(result))
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
