"""The parent-side scheduler: work table, result routing, worker supervision.

Data flow::

    pool.apply / map / imap / stream
            │  Job (pickled args, function id)
            ▼
    queue ──pump()──▶ worker.outbuf ──one write per loop turn──▶ task pipe ──▶ worker
                                                                               │
    Job resolved ◀── route() ◀── FrameReader ◀── read on readiness ◀── result pipe
    (future woken)                                       (event loop's own epoll)

    worker.sentinel readable ──▶ on_exit(): drain last results, fail or retry what was
                                 running, requeue what never started, start a replacement

Everything runs on the event loop thread; nothing here blocks except the few-microsecond
syscalls of a spawn.

Invariants:
- ``worker.jobs`` lists a worker's jobs in the order they were written to its pipe. A
  worker starts jobs in that order, at most ``concurrency`` at a time, so the first
  ``concurrency`` entries are the ones that may be running; the rest have not started.
  When a worker dies, only those may have side effects: they fail (or are retried), the
  rest go back to the front of the queue.
- A job is resolved exactly once (``Job.state`` leaves RUNNING once); a late reply for a job
  that was cancelled or timed out finds no entry and is dropped.
- The parent keeps a worker's task pipe open until the worker has been reaped: for the
  worker, a hang-up on that pipe means the parent died (see ``_worker.py``).
- A worker is picked for new work only while ``accepting``; a worker being killed or
  stopped never receives more.

Tunables:
- ``_PREFETCH_FAST`` / ``_PREFETCH_SLOW``: extra jobs a worker may hold beyond what it runs.
  Tiny tasks need a few in the pipe so the worker never waits a round trip; long tasks
  want none, so that a free worker is never starved while another holds a backlog.
- ``_FAST_TASK``: service time below which a task counts as tiny.
- ``_CANCEL_GRACE``: how long a coroutine task cancelled in a ``concurrency > 1`` worker may
  take to stop before the worker is killed (a sync function there cannot be interrupted).
- ``_STOP_GRACE``: how long a closing pool waits for a stopped worker before killing it.
"""

from __future__ import annotations

import atexit
import codecs
import collections
import contextlib
import copy
import functools
import itertools
import logging
import os
import signal
import sys
import types
import weakref
from typing import TYPE_CHECKING, Any

from .._exceptions import PoolClosedError, SerializationError, WorkerDiedError
from . import _codec, _fds, _hub, _payload, _spawn, _wire

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._loop import Backend, Future, Handle

__all__ = ("Dispatcher", "Job", "PoolConfig")

_READ_SIZE = 1 << 18
_PREFETCH_FAST = 32
_PREFETCH_SLOW = 0
_FAST_TASK = 0.0005
_STOP_GRACE = 5.0
_CANCEL_GRACE = 2.0
_FUNCTION_CACHE = 256


def _cacheable(fn: object) -> bool:
    """Is ``fn`` immutable by identity, so that its pickle may be reused for later calls?

    Only module-level functions, built-in functions of a module, and classes: what they
    do cannot change while the same object lives. Anything that carries state (a bound
    method such as ``d.get``, a closure, a partial, a callable instance) may change
    between two calls, so it is pickled with each call, and the pool keeps no reference
    to it.
    """
    kind = type(fn)
    if kind is types.FunctionType:
        plain: types.FunctionType = fn  # type: ignore[assignment]
        return plain.__closure__ is None and "<locals>" not in plain.__qualname__
    if kind is types.BuiltinFunctionType:
        owner = fn.__self__  # type: ignore[attr-defined]
        return owner is None or type(owner) is types.ModuleType
    return isinstance(fn, type) and "<locals>" not in fn.__qualname__


QUEUED, RUNNING, DONE, FAILED, CANCELLED = range(5)

_log = logging.getLogger("aioproc")


class PoolConfig:
    """Validated pool settings (see ``ProcessPool`` for their meaning)."""

    __slots__ = (
        "concurrency",
        "initializer",
        "max_tasks_per_child",
        "max_workers",
        "process",
        "retries",
        "start_method",
        "task_timeout",
    )

    def __init__(
        self,
        *,
        max_workers: int,
        concurrency: int,
        max_tasks_per_child: int | None,
        task_timeout: float | None,
        retries: int,
        start_method: str,
        initializer: bytes,
        process: bool = False,
    ) -> None:
        self.max_workers = max_workers
        self.concurrency = concurrency
        self.max_tasks_per_child = max_tasks_per_child
        self.task_timeout = task_timeout
        self.retries = retries
        self.start_method = start_method
        self.initializer = initializer
        self.process = process


class Job:
    """One unit of work: a call, a chunk of a map, or a stream.

    A stream's items and a map chunk's results as they finish (a list at a time, in input
    order; ``delivered`` counts them) go to ``on_item``, which a chunk's owner must set; a
    chunk's ``value`` is the list of its results that came with its end.
    """

    __slots__ = (
        "delivered",
        "error",
        "error_tb",
        "fn_id",
        "id",
        "mode",
        "notify",
        "on_item",
        "payload",
        "release",
        "retries",
        "started",
        "state",
        "timeout",
        "timer",
        "value",
        "waiter",
        "worker",
    )

    def __init__(
        self,
        fn_id: int,
        payload: bytes,
        mode: int = _wire.MODE_CALL,
        timeout: float | None = None,
    ) -> None:
        self.id = 0
        self.fn_id = fn_id
        self.payload = payload
        self.mode = mode
        self.state = QUEUED
        self.value: Any = None
        self.error: BaseException | None = None
        self.error_tb: types.TracebackType | None = None  # the error's own, not the awaiters'
        self.waiter: Future | None = None
        self.notify: Callable[[Job], None] | None = None
        self.on_item: Callable[[Any], None] | None = None
        self.worker: _Worker | None = None
        self.timeout = timeout
        self.timer: Handle | None = None
        self.started = 0.0
        self.retries = 0
        self.delivered = 0  # results of a map chunk already handed over (a retry skips them)
        self.release: Callable[[], None] | None = None  # frees shared memory of the args

    def finished(self) -> bool:
        return self.state > RUNNING

    def outcome(self) -> Any:
        """The value, or raise the error (``CancelledError`` for a cancelled job)."""
        if self.state == DONE:
            return self.value
        if self.state == CANCELLED:
            import asyncio

            raise asyncio.CancelledError
        assert self.error is not None
        # As asyncio.Future.result(): each raise starts from the error's own traceback, so
        # awaiting a failed task again does not pile up the frames of every earlier await.
        raise self.error.with_traceback(self.error_tb)


class _Worker:
    __slots__ = (
        "accepting",
        "assigned",
        "cancelling",
        "decoders",
        "exited",
        "flush_pending",
        "gone",
        "jobs",
        "known",
        "outbuf",
        "pid",
        "proc",
        "reader",
        "ready",
        "replaced",
        "result_fd",
        "task_fd",
        "writing",
    )

    def __init__(self, proc: _spawn.ProcessHandle, task_fd: int, result_fd: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.task_fd = task_fd
        self.result_fd = result_fd
        self.reader = _wire.FrameReader()
        self.outbuf = bytearray()
        self.writing = False
        self.flush_pending = False
        self.jobs: dict[int, Job] = {}
        self.known: set[int] = set()
        self.assigned = 0
        self.accepting = True
        self.replaced = False
        self.ready = False  # set up, initializer run: the clock of its tasks may start
        self.exited: list[Callable[[], None]] = []
        self.gone = False  # reaped, fds closed: callbacks that still arrive do nothing
        self.decoders: dict[int, codecs.IncrementalDecoder] = {}
        self.cancelling: dict[int, Handle] = {}  # job id -> grace timer (Cancel sent)


class Dispatcher:
    """Runs jobs on a set of worker processes from inside one event loop."""

    def __init__(self, backend: Backend, config: PoolConfig) -> None:
        self.backend = backend
        self.config = config
        self.workers: list[_Worker] = []
        self.queue: collections.deque[Job] = collections.deque()
        self.closing = False
        self.closed = False
        self.broken: BaseException | None = None
        self.completed = 0
        self.failed = 0
        self.restarts = 0
        self._ids = itertools.count(1)
        self._fn_ids = itertools.count(1)
        self._fn_by_obj: dict[Any, int] = {}
        self._fn_by_blob: dict[bytes, int] = {}
        self._fn_blobs: dict[int, bytes] = {}
        self._burst = False
        self._dirty: list[_Worker] = []
        self._service = _FAST_TASK  # EWMA of task service time, seconds
        self._prefetch = 0
        self._idle_waiters: list[Future] = []
        self._config_frame = self._make_config()
        _live.add(self)

    # --- workers ----------------------------------------------------------------------------

    def _make_config(self) -> bytes:
        level = _lowest_log_level()
        return _wire.encode(
            _wire.Config(
                sys_path=[os.fsencode(p) for p in sys.path if isinstance(p, str | os.PathLike)],
                cwd=os.getcwdb(),
                init=self.config.initializer,
                max_tasks=self.config.max_tasks_per_child or 0,
                concurrency=self.config.concurrency,
                log_level=level,
                env=dict(os.environb) if self.config.start_method == "forkserver" else None,
                process=self.config.process,
                **_hub_settings(),
            )
        )

    def start(self) -> None:
        """Start all workers now (a pool is warm before its first task)."""
        for _ in range(self.config.max_workers):
            self._spawn()

    def _spawn(self) -> _Worker | None:
        task_r, task_w, result_r, result_w = _spawn.make_pipes()
        _fds.register_fds(task_w, result_r)
        try:
            proc = _spawn.start_process(self.config.start_method, task_r, result_w)
        except BaseException:
            _fds.unregister_fds(task_w, result_r)
            os.close(task_w)
            os.close(result_r)
            raise
        worker = _Worker(proc, task_w, result_r)
        worker.outbuf += self._config_frame
        self.workers.append(worker)
        backend = self.backend
        backend.add_reader(result_r, lambda: self._on_readable(worker))
        backend.add_reader(proc.sentinel, lambda: self._on_exit(worker))
        self._flush(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        """Start a worker in place of one that is going away, if the pool still runs."""
        if worker.replaced:
            return
        worker.replaced = True
        if self.closed or self.broken is not None:
            return
        if self.closing and not self._outstanding():
            return
        try:
            self._spawn()
        except Exception as exc:  # pragma: no cover - fork failure, out of fds...
            self._break(WorkerDiedError(f"cannot start a replacement worker: {exc}"))
        else:
            self.restarts += 1

    def _kill(self, worker: _Worker, running: int = 0, why: str = "") -> None:
        """Kill a worker and start a replacement.

        The first ``running`` of its jobs were running: they fail (or are retried), like
        the tasks of a worker that died; the rest never started and go back to the queue.
        """
        worker.accepting = False
        jobs = [j for j in worker.jobs.values() if not j.finished()]
        worker.jobs.clear()
        retry: list[Job] = []
        for job in jobs[:running]:
            if job.retries > 0:
                job.retries -= 1
                retry.append(job)
            else:
                self._fail(job, WorkerDiedError(f"the worker process (pid {worker.pid}) {why}"))
        self._requeue(retry + jobs[running:])
        worker.proc.kill()
        self._replace(worker)

    def _stop_running(self, worker: _Worker, job_id: int) -> None:
        """Stop a running job that was cancelled or timed out (already out of ``jobs``).

        A worker running one task at a time is killed: nothing else of value runs there. A
        worker running coroutines cancels that one coroutine in place, and is killed only
        if the task has not stopped within ``_CANCEL_GRACE``.
        """
        if self.config.concurrency == 1:
            self._kill(worker)
            return
        self.send_control(worker, _wire.Cancel(job_id))
        worker.cancelling[job_id] = self.backend.call_later(
            _CANCEL_GRACE, functools.partial(self._cancel_overdue, worker, job_id)
        )

    def _cancel_overdue(self, worker: _Worker, job_id: int) -> None:
        if worker.cancelling.pop(job_id, None) is not None and worker.accepting:
            _log.warning(
                "task %d ignored cancellation for %.0f s; killing worker %d",
                job_id,
                _CANCEL_GRACE,
                worker.pid,
            )
            self._kill(
                worker,
                running=self.config.concurrency - 1,
                why="was killed because a cancelled task on it did not stop",
            )
            self._pump()

    def _on_exit(self, worker: _Worker) -> None:
        if worker.gone:
            return
        backend = self.backend
        backend.remove_reader(worker.proc.sentinel)
        for timer in worker.cancelling.values():
            timer.cancel()
        worker.cancelling.clear()
        # Results written just before the end are still in the pipe: route them first.
        self._drain(worker)
        code = worker.proc.reap()
        worker.gone = True
        backend.remove_reader(worker.result_fd)
        if worker.writing:
            backend.remove_writer(worker.task_fd)
        _fds.unregister_fds(worker.task_fd, worker.result_fd)
        for fd in (worker.task_fd, worker.result_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ValueError):
            self.workers.remove(worker)
        jobs = [j for j in worker.jobs.values() if not j.finished()]
        worker.jobs.clear()
        running = jobs[: self.config.concurrency]
        waiting = jobs[self.config.concurrency :]
        retry: list[Job] = []
        for job in running:
            if job.retries > 0 and self.broken is None and not self.closed:
                job.retries -= 1
                retry.append(job)
            else:
                self._fail(job, _own_copy(self.broken) if self.broken else _died(worker.pid, code))
        self._requeue(retry + waiting)
        for callback in worker.exited:
            callback()
        if self.broken is not None:
            self._fail_queue(self.broken)
        else:
            self._replace(worker)
        self._pump()
        self._check_idle()

    def _drain(self, worker: _Worker) -> None:
        fd = worker.result_fd
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            if not self._route_bytes(worker, data):
                return

    # --- submitting -------------------------------------------------------------------------

    def function_id(self, fn: Callable[..., Any]) -> int:
        """The id under which workers know ``fn``; pickles it on first use.

        Raises:
            SerializationError: ``fn`` cannot be pickled.
        """
        # Module-level functions are cached by identity (see _cacheable); anything else is
        # pickled each time, and the blob table still spares the workers a second Define.
        cacheable = _cacheable(fn)
        if cacheable:
            fn_id = self._fn_by_obj.get(fn)
            if fn_id is not None:
                return fn_id
        blob = _codec.dumps_function(fn)
        fn_id = self._fn_by_blob.get(blob)
        if fn_id is None:
            fn_id = next(self._fn_ids)
            self._fn_by_blob[blob] = fn_id
            self._fn_blobs[fn_id] = blob
            if len(self._fn_blobs) > _FUNCTION_CACHE:
                self._forget_oldest_function()
        if cacheable:
            if len(self._fn_by_obj) >= _FUNCTION_CACHE:
                del self._fn_by_obj[next(iter(self._fn_by_obj))]
            self._fn_by_obj[fn] = fn_id
        return fn_id

    def _forget_oldest_function(self) -> None:
        old = next(iter(self._fn_blobs))
        blob = self._fn_blobs.pop(old)
        del self._fn_by_blob[blob]
        for obj in [o for o, i in self._fn_by_obj.items() if i == old]:
            del self._fn_by_obj[obj]
        for worker in self.workers:
            if old in worker.known:
                worker.known.discard(old)
                _wire.encode_into(_wire.Drop(old), worker.outbuf)
                self._mark_dirty(worker)

    def submit(self, job: Job) -> None:
        """Queue a job; it is written to a worker at once or at the end of this loop turn.

        Raises:
            PoolClosedError: the pool is closed or broken.
        """
        if self.closing or self.closed:
            raise PoolClosedError("the pool is closed")
        if self.broken is not None:
            raise PoolClosedError("the pool is broken") from self.broken
        job.id = next(self._ids)
        # A stream that already delivered items cannot be replayed without duplicates.
        job.retries = 0 if job.mode == _wire.MODE_STREAM else self.config.retries
        if job.timeout is None:
            job.timeout = self.config.task_timeout
        self.queue.append(job)
        if not self._burst:
            # The first job of a loop turn goes out now (lowest latency); the rest of the
            # turn's jobs are batched into one write per worker by _end_burst.
            self._burst = True
            self.backend.call_soon(self._end_burst)
            self._pump()

    def _schedule_pump(self) -> None:
        if not self._burst:
            self._burst = True
            self.backend.call_soon(self._end_burst)

    def _end_burst(self) -> None:
        self._burst = False
        self._pump()

    def _pick(self) -> _Worker | None:
        limit = self.config.concurrency + self._prefetch
        max_tasks = self.config.max_tasks_per_child
        best: _Worker | None = None
        best_load = limit
        for worker in self.workers:
            if not worker.accepting:
                continue
            load = len(worker.jobs)
            if load < best_load and not (max_tasks and worker.assigned >= max_tasks):
                best = worker
                best_load = load
                if load == 0:
                    break
        return best

    def _pump(self) -> None:
        queue = self.queue
        while queue:
            job = queue[0]
            if job.state != QUEUED:
                queue.popleft()
                continue
            worker = self._pick()
            if worker is None:
                break
            queue.popleft()
            self._send(worker, job)
        dirty = self._dirty
        while dirty:
            self._flush(dirty.pop())

    def _send(self, worker: _Worker, job: Job) -> None:
        fn_id = job.fn_id
        buf = worker.outbuf
        if fn_id not in worker.known:
            _wire.encode_into(_wire.Define(fn_id, self._fn_blobs[fn_id]), buf)
            worker.known.add(fn_id)
        try:
            _wire.encode_into(_wire.Call(job.id, fn_id, job.payload, job.mode, job.delivered), buf)
        except SerializationError as exc:
            self._fail(job, exc)
            return
        job.state = RUNNING
        job.worker = worker
        worker.jobs[job.id] = job
        worker.assigned += 1
        if len(worker.jobs) <= self.config.concurrency:
            self._started(job)
        if max_tasks := self.config.max_tasks_per_child:
            if worker.assigned >= max_tasks:
                worker.accepting = False
        self._mark_dirty(worker)

    def _started(self, job: Job) -> None:
        job.started = self.backend.time()
        worker = job.worker
        if worker is not None and not worker.ready:
            return  # the clock starts once the worker is up (see _on_ready)
        if job.timeout is not None and job.mode != _wire.MODE_STREAM:
            job.timer = self.backend.call_later(job.timeout, lambda: self._on_timeout(job))

    def _on_ready(self, worker: _Worker) -> None:
        """The worker is set up: start the clock of the jobs it runs first.

        A task's timeout covers its own run, not a new worker's start-up and initializer
        (a new interpreter under spawn, a slow initializer), so a task sent to a worker
        that is still starting waits for this to be timed.
        """
        worker.ready = True
        for job in itertools.islice(worker.jobs.values(), self.config.concurrency):
            if job.started:
                self._started(job)

    def _mark_dirty(self, worker: _Worker) -> None:
        if not worker.flush_pending:
            worker.flush_pending = True
            self._dirty.append(worker)

    def _flush(self, worker: _Worker) -> None:
        worker.flush_pending = False
        buf = worker.outbuf
        if worker.gone:
            buf.clear()  # its task fd is closed; the number may be reused already
            return
        if not buf or worker.writing:
            return
        try:
            n = os.write(worker.task_fd, buf)
        except BlockingIOError:
            n = 0
        except OSError:
            # The worker is gone; its sentinel will fire and settle its jobs.
            buf.clear()
            return
        del buf[:n]
        if buf:
            worker.writing = True
            self.backend.add_writer(worker.task_fd, lambda: self._on_writable(worker))

    def _on_writable(self, worker: _Worker) -> None:
        if worker.gone:
            return
        buf = worker.outbuf
        try:
            n = os.write(worker.task_fd, buf)
        except BlockingIOError:
            return
        except OSError:
            buf.clear()
            n = 0
        del buf[:n]
        if not buf:
            worker.writing = False
            self.backend.remove_writer(worker.task_fd)

    def send_control(self, worker: _Worker, msg: _wire.Message) -> None:
        _wire.encode_into(msg, worker.outbuf)
        self._mark_dirty(worker)
        self._schedule_pump()

    # --- results ----------------------------------------------------------------------------

    def _on_readable(self, worker: _Worker) -> None:
        if worker.gone:
            # A late wake-up (trio runs a watcher one step after it was cancelled): the fd
            # number may belong to something else by now, maybe a blocking pipe.
            return
        try:
            data = os.read(worker.result_fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # End of the pipe: the process is exiting; its sentinel settles the rest.
            self.backend.remove_reader(worker.result_fd)
            return
        self._route_bytes(worker, data)
        if self.queue or self._dirty:
            self._pump()

    def _route_bytes(self, worker: _Worker, data: bytes) -> bool:
        try:
            msgs = worker.reader.feed(data)
        except SerializationError as exc:
            # Framing is lost: nothing more from this worker can be trusted.
            _log.error("corrupt frame from worker %d: %s", worker.pid, exc)
            self.backend.remove_reader(worker.result_fd)
            for job in list(worker.jobs.values())[: self.config.concurrency]:
                self._fail(job, _own_copy(exc))
            self._kill(worker)
            return False
        for msg in msgs:
            self._route(worker, msg)
        return True

    def _route(self, worker: _Worker, msg: _wire.Message) -> None:
        if worker.cancelling and isinstance(msg, _wire.Done | _wire.Failed | _wire.End):
            timer = worker.cancelling.pop(msg.id, None)
            if timer is not None:
                timer.cancel()  # the cancelled task did stop
        if isinstance(msg, _wire.Done):
            job = worker.jobs.pop(msg.id, None)
            if job is not None:
                self._advance(worker, job)
                try:
                    value = _payload.loads_any(msg.value)
                except BaseException as exc:
                    # Even SystemExit or KeyboardInterrupt from an object's __reduce__: it
                    # fails this task, as in concurrent.futures, not the event loop.
                    self._fail(job, _rebuild_error("the result", exc))
                else:
                    self._succeed(job, value)
        elif isinstance(msg, _wire.Failed):
            job = worker.jobs.pop(msg.id, None)
            if job is not None:
                self._advance(worker, job)
                self._fail(job, _codec.loads_error(msg.error))
        elif isinstance(msg, _wire.Item):
            job = worker.jobs.get(msg.id)
            if job is not None and job.on_item is not None:
                try:
                    item = _payload.loads_any(msg.value)
                except BaseException as exc:
                    worker.jobs.pop(msg.id)
                    self._advance(worker, job)
                    self._fail(job, _rebuild_error("an item", exc))
                    # The worker is still running it (a stream would wait for credit
                    # forever): stop it, as for a cancelled task.
                    self._stop_running(worker, msg.id)
                else:
                    if job.mode != _wire.MODE_STREAM:
                        # The next results of a map chunk: each counts as completed now,
                        # and a retry after a crash runs only the items after them.
                        job.delivered += len(item)
                        self.completed += len(item)
                    job.on_item(item)
        elif isinstance(msg, _wire.End):
            job = worker.jobs.pop(msg.id, None)
            if job is not None:
                self._advance(worker, job)
                self._succeed(job, None)
        elif isinstance(msg, _wire.Output):
            self._output(worker, msg)
        elif isinstance(msg, _wire.Log):
            _emit_log(msg.record)
        elif isinstance(msg, _wire.Ready):
            self._on_ready(worker)
        elif isinstance(msg, _wire.InitFailed):
            error = _codec.loads_error(msg.error)
            broken = WorkerDiedError("the worker initializer failed")
            broken.__cause__ = error
            self._break(broken)

    def _advance(self, worker: _Worker, job: Job) -> None:
        """``job`` left ``worker``: stop its timer, start the clock of the next in line."""
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        if job.mode == _wire.MODE_CALL:
            # Adapt prefetch to the observed service time of single calls.
            elapsed = self.backend.time() - job.started
            self._service = self._service * 0.9 + elapsed * 0.1
            self._prefetch = _PREFETCH_FAST if self._service < _FAST_TASK else _PREFETCH_SLOW
        concurrency = self.config.concurrency
        jobs = worker.jobs
        if len(jobs) >= concurrency:
            nxt = next(itertools.islice(jobs.values(), concurrency - 1, None))
            if nxt.started == 0.0:
                self._started(nxt)

    def _output(self, worker: _Worker, msg: _wire.Output) -> None:
        decoder = worker.decoders.get(msg.fd)
        if decoder is None:
            decoder = worker.decoders[msg.fd] = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(msg.data)
        stream = sys.stdout if msg.fd == 1 else sys.stderr
        if stream is not None and text:
            try:
                stream.write(text)
            except Exception:  # pragma: no cover - a closed stream in the parent
                pass

    # --- resolution -------------------------------------------------------------------------

    def _succeed(self, job: Job, value: Any) -> None:
        job.state = DONE
        job.value = value
        if job.mode == _wire.MODE_MAP or job.mode == _wire.MODE_STARMAP:
            self.completed += len(value)  # the chunk's last results: each item counts
        else:
            self.completed += 1
        self._resolved(job)

    def _fail(self, job: Job, error: BaseException) -> None:
        if job.finished():
            return
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        job.state = FAILED
        job.error = error
        job.error_tb = error.__traceback__
        self.failed += 1
        self._resolved(job)

    def _resolved(self, job: Job) -> None:
        release = job.release
        if release is not None:
            job.release = None
            with contextlib.suppress(Exception):
                release()
        waiter = job.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        notify = job.notify
        if notify is not None:
            notify(job)
        if self._idle_waiters:
            self._check_idle()

    def cancel(self, job: Job) -> None:
        """Cancel a job: a queued one never starts, a running one is stopped."""
        if job.finished():
            return
        state = job.state
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        job.state = CANCELLED
        worker = job.worker
        if state == RUNNING and worker is not None and job.id in worker.jobs:
            ids = list(worker.jobs)
            ahead = ids[: ids.index(job.id)]
            del worker.jobs[job.id]
            if len(ahead) < self.config.concurrency:
                self._stop_running(worker, job.id)
            else:
                # Still in the worker's pipe, not started: the worker skips it.
                self.send_control(worker, _wire.Cancel(job.id))
                if self.config.concurrency == 1 and self._moved_on(worker, ahead):
                    self._kill(worker)
            self._schedule_pump()
        self._resolved(job)

    def _moved_on(self, worker: _Worker, ahead: list[int]) -> bool:
        """Has ``worker`` answered the jobs ``ahead`` since, so that it may run the next?

        The replies the parent has not read yet tell: so the Cancel just queued for the
        next job goes out first, then the pipe is read. A worker that had not answered by
        then reads that Cancel before it starts the job, and skips it; one that had may be
        running the job, which a worker running one task at a time cannot interrupt.
        """
        self._flush(worker)
        if not worker.gone:
            self._drain(worker)
        return not any(job_id in worker.jobs for job_id in ahead)

    def _on_timeout(self, job: Job) -> None:
        job.timer = None
        if job.finished():
            return
        worker = job.worker
        self._fail(job, TimeoutError(f"the task ran longer than its timeout of {job.timeout} s"))
        if worker is not None and worker.jobs.pop(job.id, None) is not None:
            self._stop_running(worker, job.id)
        self._pump()

    def _requeue(self, jobs: list[Job]) -> None:
        for job in reversed(jobs):
            if not job.finished():
                if job.timer is not None:
                    # A retried job's clock restarts on its next worker.
                    job.timer.cancel()
                    job.timer = None
                job.state = QUEUED
                job.worker = None
                job.started = 0.0
                self.queue.appendleft(job)

    def _break(self, error: BaseException) -> None:
        if self.broken is None:
            self.broken = error
            self._fail_queue(error)

    def _fail_queue(self, error: BaseException) -> None:
        while self.queue:
            self._fail(self.queue.popleft(), _own_copy(error))

    # --- waiting ----------------------------------------------------------------------------

    async def wait(self, job: Job) -> Any:
        """Wait for ``job``; if the waiting task is cancelled, cancel the job too."""
        if job.state <= RUNNING:
            waiter = job.waiter
            if waiter is None:
                waiter = job.waiter = self.backend.create_future()
            try:
                await waiter
            except BaseException:
                self.cancel(job)
                raise
        return job.outcome()

    def _outstanding(self) -> bool:
        """Is any job other than a stream queued or running?

        Streams are driven by their consumer; one that nobody reads any more would never
        end, so a closing pool does not wait for streams (it aborts them).
        """
        stream = _wire.MODE_STREAM
        if any(job.state == QUEUED and job.mode != stream for job in self.queue):
            return True
        return any(job.mode != stream for worker in self.workers for job in worker.jobs.values())

    def _check_idle(self) -> None:
        if self._idle_waiters and not self._outstanding():
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_idle(self) -> None:
        """Wait until no job is queued or running."""
        while self._outstanding():
            waiter = self.backend.create_future()
            self._idle_waiters.append(waiter)
            await waiter

    # --- shutting down ----------------------------------------------------------------------

    def cancel_all(self) -> None:
        """Cancel every queued and running job."""
        for job in list(self.queue):
            self.cancel(job)
        self.queue.clear()
        for worker in list(self.workers):
            for job in list(worker.jobs.values()):
                self.cancel(job)

    async def aclose(self, *, cancel: bool) -> None:
        """Stop accepting work, finish (or cancel) what is there, stop every worker."""
        if self.closed:
            return
        self.closing = True
        if cancel:
            self.closed = True  # no replacement for the workers cancel_all kills
            self.cancel_all()
        else:
            await self.wait_idle()
            self.closed = True
            self._abort_streams()
        self.closed = True
        pending: list[Future] = []
        for worker in list(self.workers):
            waiter = self.backend.create_future()
            worker.exited.append(_setter(waiter))
            pending.append(waiter)
            worker.accepting = False
            worker.replaced = True
            if cancel:
                worker.proc.kill()
            else:
                self.send_control(worker, _wire.Stop())
        if pending:
            timer = self.backend.call_later(_STOP_GRACE, self.kill_all)
            try:
                for waiter in pending:
                    await waiter
            finally:
                timer.cancel()
        _live.discard(self)

    def _abort_streams(self) -> None:
        error = PoolClosedError("the pool closed while the stream was still running")
        self._fail_queue(error)
        for worker in list(self.workers):
            if worker.jobs:
                for job in list(worker.jobs.values()):
                    self._fail(job, _own_copy(error))
                self._kill(worker)

    def kill_all(self) -> None:
        """Kill every worker now (for the grace timeout)."""
        for worker in list(self.workers):
            worker.accepting = False
            worker.replaced = True
            worker.proc.kill()

    def terminate_sync(self) -> None:
        """Kill and reap every worker without the event loop (GC, interpreter exit).

        Every unresolved job fails with PoolClosedError.
        """
        if self.closed and not self.workers:
            return
        self.closing = self.closed = True
        error = PoolClosedError("the pool was shut down before the task completed")
        self._fail_queue(error)
        for worker in list(self.workers):
            for job in list(worker.jobs.values()):
                self._fail(job, _own_copy(error))
            worker.jobs.clear()
            worker.replaced = True
            worker.proc.kill()
        for worker in list(self.workers):
            with contextlib.suppress(Exception):
                if self.backend.is_running():
                    self.backend.remove_reader(worker.result_fd)
                    self.backend.remove_reader(worker.proc.sentinel)
            with contextlib.suppress(Exception):
                worker.proc.reap()
            worker.gone = True
            _fds.unregister_fds(worker.task_fd, worker.result_fd)
            for fd in (worker.task_fd, worker.result_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.workers.clear()
        _live.discard(self)

    # --- introspection ----------------------------------------------------------------------

    def pids(self) -> list[int]:
        # A killed worker stays listed until it is reaped; its replacement already counts.
        return [w.pid for w in self.workers if w.proc.exitcode is None and not w.replaced]

    def busy(self) -> int:
        return sum(1 for w in self.workers if w.jobs)

    def queued(self) -> int:
        return sum(1 for job in self.queue if job.state == QUEUED)


def _hub_settings() -> dict[str, Any]:
    """The IPC hub workers should use: IPC objects they create live there.

    The hub is created now if need be (a listening socket, no thread): a worker that
    creates a queue must be able to hand it back, which only a hub that the parent's event
    loop serves allows.
    """
    known = _hub.known_address()
    if known is None:
        if _hub.in_worker:
            return {}
        hub = _hub.local_hub()
        hub.ensure_attached()
        known = hub.address, hub.key
    return {"hub": known[0], "hub_key": known[1]}


def _own_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` for one more task: raising one object from several awaits
    would give every awaiter the frames of all the others."""
    try:
        copied = copy.copy(error)
    except Exception:  # pragma: no cover - an exception type that refuses to be copied
        return error
    copied.__cause__ = error.__cause__
    copied.__suppress_context__ = error.__suppress_context__
    return copied


def _rebuild_error(what: str, exc: BaseException) -> SerializationError:
    error = SerializationError(f"cannot rebuild {what}: {exc!r}")
    error.__cause__ = exc
    return error


def _setter(waiter: Future) -> Callable[[], None]:
    def set_done() -> None:
        if not waiter.done():
            waiter.set_result(None)

    return set_done


def _died(pid: int, code: int | None) -> WorkerDiedError:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name}"
    else:
        how = f"exited with code {code}"
    return WorkerDiedError(f"the worker process (pid {pid}) {how} while running the task", code)


def _lowest_log_level() -> int:
    """The most verbose level any configured logger wants: workers send at least that."""
    level = logging.getLogger().getEffectiveLevel()
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.level:
            level = min(level, logger.level)
    return level


def _emit_log(blob: bytes) -> None:
    try:
        record = logging.makeLogRecord(_codec.loads(blob))
    except BaseException:  # pragma: no cover - defensive: a record that will not rebuild
        return
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


_live: weakref.WeakSet[Dispatcher] = weakref.WeakSet()


def terminate_all() -> None:
    """Kill every worker of every pool still open, then the fork server (at exit)."""
    for dispatcher in list(_live):
        with contextlib.suppress(Exception):
            dispatcher.terminate_sync()
    _spawn.shutdown_forkserver()


atexit.register(terminate_all)
