"""The parent-side scheduler: the queue, result routing, worker supervision.

Data flow::

    Engine.call / chunk (_engine.py): a Job with its function id and pickled arguments
            │
            ▼
    queue ──pump()──▶ link.outbuf ──one write per loop turn──▶ task pipe ──▶ worker
                                                                              │
    Job resolved ◀── route() ◀── FrameReader ◀── read on readiness ◀── result pipe
    (on_done, future)                                   (event loop's own epoll)

    worker.sentinel readable ──▶ on_exit(): drain last results, fail or retry what was
                                 running, requeue what never started, start a replacement

Roles: the pipes and write buffer of one worker are a ``WorkerLink`` (``_link.py``), the
function table is ``_functions.py``, printed output and logs are replayed by ``_relay.py``,
and what the public layer calls is ``Engine`` (``_engine.py``). This module decides: which
worker gets which job, when a job's clock runs, what a death, a timeout or a cancellation
does to each job.

Everything runs on the event loop thread; nothing here blocks except the few-microsecond
syscalls of a spawn.

Invariants:
- ``_Worker.jobs`` lists a worker's jobs in the order they were written to its pipe. A
  worker starts jobs in that order, at most ``concurrency`` at a time, so the first
  ``concurrency`` entries are the ones that may be running; the rest have not started.
  When a worker dies, only those may have side effects: they fail (or are retried), the
  rest go back to the front of the queue.
- A job is resolved exactly once (``Job.state`` leaves SENT once); a late reply for a job
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
import collections
import contextlib
import copy
import enum
import functools
import itertools
import logging
import os
import signal
import sys
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from .._exceptions import AioprocError, PoolClosedError, SerializationError, WorkerDiedError
from . import _client, _codec, _fds, _hub, _loop, _payload, _relay, _role, _spawn, _wire
from ._functions import FunctionTable
from ._link import WorkerLink

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._loop import Backend, Future, Handle

__all__ = ("Dispatcher", "Job", "JobState", "JobView", "PoolConfig")

_PREFETCH_FAST = 32
_PREFETCH_SLOW = 0
_FAST_TASK = 0.0005
_STOP_GRACE = 5.0
_CANCEL_GRACE = 2.0

MODE_CALL = _wire.MODE_CALL
MODE_MAP = _wire.MODE_MAP
MODE_STARMAP = _wire.MODE_STARMAP
MODE_STREAM = _wire.MODE_STREAM


class JobState(enum.IntEnum):
    """Where a job is. The order matters: ``state > SENT`` means resolved."""

    QUEUED = 0  # in the dispatcher's queue
    SENT = 1  # written to a worker's pipe; running there once ``Job.started`` is set
    DONE = 2
    FAILED = 3
    CANCELLED = 4


# Module-level names for the hot paths (a global load, not an enum attribute lookup).
QUEUED, SENT, DONE, FAILED, CANCELLED = JobState

_log = logging.getLogger("aioproc")


class PoolConfig:
    """Validated pool settings (see ``ProcessPool`` for their meaning)."""

    __slots__ = (
        "concurrency",
        "initargs",
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
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        process: bool = False,
    ) -> None:
        self.max_workers = max_workers
        self.concurrency = concurrency
        self.max_tasks_per_child = max_tasks_per_child
        self.task_timeout = task_timeout
        self.retries = retries
        self.start_method = start_method
        self.initializer = initializer
        self.initargs = initargs
        self.process = process  # one aioproc.Process: exit status follows its function


class JobView(Protocol):
    """What the public layer may read of a job; only the dispatcher changes one."""

    @property
    def id(self) -> int: ...
    @property
    def state(self) -> JobState: ...
    @property
    def value(self) -> Any: ...
    @property
    def error(self) -> BaseException | None: ...
    def finished(self) -> bool: ...
    def running(self) -> bool: ...
    def outcome(self) -> Any: ...


class Job:
    """One unit of work: a call, a chunk of a map, or a stream.

    A stream's items and a map chunk's results as they finish (a list at a time, in input
    order; ``delivered`` counts them) go to ``on_item``; a chunk's ``value`` is the list of
    its results that came with its end.
    """

    __slots__ = (
        "delivered",
        "error",
        "error_tb",
        "fn_id",
        "future",
        "id",
        "mode",
        "on_done",
        "on_item",
        "payload",
        "release",
        "retries",
        "started",
        "state",
        "timeout",
        "timer",
        "value",
        "worker",
    )

    def __init__(
        self,
        fn_id: int,
        payload: bytes,
        mode: int = MODE_CALL,
        timeout: float | None = None,
    ) -> None:
        self.id = 0
        self.fn_id = fn_id
        self.payload = payload
        self.mode = mode
        # Invariant: moves QUEUED -> SENT -> (QUEUED again when requeued after a death)
        # and at most once to DONE, FAILED or CANCELLED, where it stays.
        self.state = QUEUED
        self.value: Any = None
        self.error: BaseException | None = None
        self.error_tb: Any = None  # the error's own traceback, not the awaiters' frames
        self.future: Future | None = None  # what ``Dispatcher.wait`` parks on
        self.on_done: Callable[[Job], None] | None = None
        self.on_item: Callable[[Any], None] | None = None
        self.worker: _Worker | None = None
        self.timeout = timeout
        self.timer: Handle | None = None  # the timeout's, while the job's clock runs
        # Invariant: 0.0 until the job starts on its worker (a new worker must be ready
        # first, and a prefetched job waits for those ahead of it); then the loop time it
        # started. A job is running iff ``state == SENT and started != 0.0``.
        self.started = 0.0
        self.retries = 0
        self.delivered = 0  # results of a map chunk already handed over (a retry skips them)
        self.release: Callable[[], None] | None = None  # frees shared memory of the args

    def finished(self) -> bool:
        return self.state > SENT

    def running(self) -> bool:
        return self.state == SENT and self.started != 0.0

    def outcome(self) -> Any:
        """The value, or raise the error (``CancelledError`` for a cancelled job)."""
        if self.state == DONE:
            return self.value
        if self.state == CANCELLED:
            raise _loop.cancelled_error()
        assert self.error is not None
        # As asyncio.Future.result(): each raise starts from the error's own traceback, so
        # awaiting a failed task again does not pile up the frames of every earlier await.
        raise self.error.with_traceback(self.error_tb)


class _Worker(WorkerLink):
    """A worker's link plus what the dispatcher tracks of it."""

    __slots__ = (
        "accepting",
        "assigned",
        "cancelling",
        "defined",
        "exit_callbacks",
        "jobs",
        "output",
        "ready",
        "replaced",
    )

    def __init__(self, proc: _spawn.ProcessHandle, task_fd: int, result_fd: int) -> None:
        super().__init__(proc, task_fd, result_fd)
        # Invariant: in the order written to the pipe; the first ``concurrency`` may be
        # running, the rest have not started (see the module's Invariants).
        self.jobs: dict[int, Job] = {}
        self.defined: set[int] = set()  # function ids this worker was sent a Define for
        self.assigned = 0  # jobs ever written to it (for max_tasks_per_child)
        self.accepting = True
        self.replaced = False  # a replacement was started (or none is wanted)
        self.ready = False  # set up, initializer run: the clock of its tasks may start
        self.exit_callbacks: list[Callable[[], None]] = []  # run once it has been reaped
        self.output = _relay.OutputRelay()
        self.cancelling: dict[int, Handle] = {}  # job id -> grace timer (Cancel sent)


class Dispatcher:
    """Runs jobs on a set of worker processes from inside one event loop."""

    def __init__(
        self,
        backend: Backend,
        config: PoolConfig,
        *,
        launch: Callable[[str, int, int], _spawn.ProcessHandle] = _spawn.start_process,
    ) -> None:
        self.backend = backend
        self.config = config
        # Starts a worker process on a task pipe's read end and a result pipe's write end;
        # the engine's tests pass one that starts no process.
        self._launch = launch
        self.workers: list[_Worker] = []
        self.queue: collections.deque[Job] = collections.deque()
        self.closing = False
        self.closed = False
        self.broken: BaseException | None = None
        self.completed = 0
        self.failed = 0
        self.restarts = 0
        self._ids = itertools.count(1)
        self.functions = FunctionTable(self._drop_function)
        self._pump_scheduled = False
        self._dirty: list[_Worker] = []
        self._service = _FAST_TASK  # EWMA of task service time, seconds
        self._prefetch = 0
        self._idle_futures: list[Future] = []
        self._config_frame = self._make_config()
        _live.add(self)

    # --- jobs in ----------------------------------------------------------------------------

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
        job.retries = 0 if job.mode == MODE_STREAM else self.config.retries
        if job.timeout is None:
            job.timeout = self.config.task_timeout
        self.queue.append(job)
        if not self._pump_scheduled:
            # The first job of a loop turn goes out now (lowest latency); the rest of the
            # turn's jobs are batched into one write per worker by _end_of_turn.
            self._pump_scheduled = True
            self.backend.call_soon(self._end_of_turn)
            self._pump()

    def cancel(self, job: Job) -> None:
        """Cancel a job: a queued one never starts, a running one is stopped."""
        if job.finished():
            return
        state = job.state
        self._stop_timer(job)
        job.state = CANCELLED
        worker = job.worker
        if state == SENT and worker is not None and job.id in worker.jobs:
            ids = list(worker.jobs)
            ahead = ids[: ids.index(job.id)]
            del worker.jobs[job.id]
            if len(ahead) < self.config.concurrency:
                self._stop_running(worker, job.id)
            else:
                # Still in the worker's pipe, not started: the worker skips it.
                self.send_control(worker, _wire.Cancel(job.id))
                if self.config.concurrency == 1 and self._answered(worker, ahead):
                    self._kill(worker)
            self._schedule_pump()
        self._resolved(job)

    # --- workers ----------------------------------------------------------------------------

    def _make_config(self) -> bytes:
        config = self.config
        init = b""
        if config.initializer is not None:
            init = _codec.dumps((config.initializer, config.initargs))
        return _wire.encode(
            _wire.Config(
                sys_path=[os.fsencode(p) for p in sys.path if isinstance(p, str | os.PathLike)],
                cwd=os.getcwdb(),
                init=init,
                max_tasks=config.max_tasks_per_child or 0,
                concurrency=config.concurrency,
                log_level=_relay.lowest_log_level(),
                env=dict(os.environb) if config.start_method == "forkserver" else None,
                process=config.process,
                **_hub_address(),
            )
        )

    def start(self) -> None:
        """Start all workers now (a pool is warm before its first task)."""
        for _ in range(self.config.max_workers):
            self._start_worker()

    def _start_worker(self) -> _Worker:
        task_r, task_w, result_r, result_w = _spawn.make_pipes()
        _fds.register_fds(task_w, result_r)
        try:
            proc = self._launch(self.config.start_method, task_r, result_w)
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
        worker.flush(backend)
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
            self._start_worker()
        except OSError as exc:  # pragma: no cover - fork failure, out of fds or memory
            self._break(WorkerDiedError(f"cannot start a replacement worker: {exc}"))
        else:
            self.restarts += 1

    def _settle(self, worker: _Worker, running: int, error: Callable[[], BaseException]) -> None:
        """Settle the jobs of a worker that died or is being killed.

        The first ``running`` of its unfinished jobs were running: they are retried while
        their ``retries`` last (and the pool still runs), else fail with ``error()``. The
        rest never started and go back to the front of the queue.
        """
        jobs = [j for j in worker.jobs.values() if not j.finished()]
        worker.jobs.clear()
        retry: list[Job] = []
        can_retry = self.broken is None and not self.closed
        for job in jobs[:running]:
            if job.retries > 0 and can_retry:
                job.retries -= 1
                retry.append(job)
            else:
                self._fail(job, error())
        self._requeue(retry + jobs[running:])

    def _kill(self, worker: _Worker, running: int = 0, why: str = "") -> None:
        """Kill a worker and start a replacement; its jobs are settled (see ``_settle``)."""
        worker.accepting = False
        self._settle(
            worker,
            running,
            lambda: WorkerDiedError(f"the worker process (pid {worker.pid}) {why}"),
        )
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
        if worker.closed:
            return
        backend = self.backend
        backend.remove_reader(worker.proc.sentinel)
        for timer in worker.cancelling.values():
            timer.cancel()
        worker.cancelling.clear()
        # Results written just before the end are still in the pipe: route them first.
        self._drain(worker)
        code = worker.proc.reap()
        worker.close(backend)
        if worker in self.workers:
            self.workers.remove(worker)
        broken = self.broken
        if broken is not None:
            self._settle(worker, self.config.concurrency, lambda: _own_copy(broken))
        else:
            self._settle(worker, self.config.concurrency, lambda: _died(worker.pid, code))
        for callback in worker.exit_callbacks:
            callback()
        if self.broken is not None:
            self._fail_queue(self.broken)
        else:
            self._replace(worker)
        self._pump()
        self._check_idle()

    def _drain(self, worker: _Worker) -> None:
        while data := worker.read():
            if not self._route_bytes(worker, data):
                return

    def _drop_function(self, fn_id: int) -> None:
        """The function table forgot ``fn_id``: so do the workers that know it."""
        for worker in self.workers:
            if fn_id in worker.defined:
                worker.defined.discard(fn_id)
                worker.send(_wire.Drop(fn_id))
                self._mark_dirty(worker)

    # --- sending ----------------------------------------------------------------------------

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self.backend.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        self._pump_scheduled = False
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
        backend = self.backend
        while dirty:
            dirty.pop().flush(backend)

    def _send(self, worker: _Worker, job: Job) -> None:
        fn_id = job.fn_id
        buf = worker.outbuf
        if fn_id not in worker.defined:
            _wire.encode_into(_wire.Define(fn_id, self.functions.pickle(fn_id)), buf)
            worker.defined.add(fn_id)
        try:
            _wire.encode_into(_wire.Call(job.id, fn_id, job.payload, job.mode, job.delivered), buf)
        except SerializationError as exc:
            self._fail(job, exc)
            return
        job.state = SENT
        job.worker = worker
        worker.jobs[job.id] = job
        worker.assigned += 1
        if len(worker.jobs) <= self.config.concurrency:
            self._start_clock(job)
        if max_tasks := self.config.max_tasks_per_child:
            if worker.assigned >= max_tasks:
                worker.accepting = False
        self._mark_dirty(worker)

    def _start_clock(self, job: Job) -> None:
        """The job starts on its worker: time it (the timeout waits for a ready worker)."""
        job.started = self.backend.time()
        worker = job.worker
        if worker is not None and not worker.ready:
            return  # the clock starts once the worker is up (see _on_ready)
        if job.timeout is not None and job.mode != MODE_STREAM:
            job.timer = self.backend.call_later(job.timeout, lambda: self._on_timeout(job))

    def _stop_timer(self, job: Job) -> None:
        timer = job.timer
        if timer is not None:
            timer.cancel()
            job.timer = None

    def _on_ready(self, worker: _Worker) -> None:
        """The worker is set up: start the clock of the jobs it runs first.

        A task's timeout covers its own run, not a new worker's start-up and initializer
        (a new interpreter under spawn, a slow initializer), so a task sent to a worker
        that is still starting waits for this to be timed.
        """
        worker.ready = True
        for job in itertools.islice(worker.jobs.values(), self.config.concurrency):
            if job.started:
                self._start_clock(job)

    def _mark_dirty(self, worker: _Worker) -> None:
        if not worker.flush_pending:
            worker.flush_pending = True
            self._dirty.append(worker)

    def send_control(self, worker: _Worker, msg: _wire.Message) -> None:
        worker.send(msg)
        self._mark_dirty(worker)
        self._schedule_pump()

    # --- results ----------------------------------------------------------------------------

    def _on_readable(self, worker: _Worker) -> None:
        if worker.closed:
            # A late wake-up (trio runs a watcher one step after it was cancelled): the fd
            # number may belong to something else by now, maybe a blocking pipe.
            return
        data = worker.read()
        if data is None:
            return
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
                self._left_worker(worker, job)
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
                self._left_worker(worker, job)
                self._fail(job, _codec.loads_error(msg.error))
        elif isinstance(msg, _wire.Item):
            job = worker.jobs.get(msg.id)
            if job is not None and job.on_item is not None:
                try:
                    item = _payload.loads_any(msg.value)
                except BaseException as exc:
                    worker.jobs.pop(msg.id)
                    self._left_worker(worker, job)
                    self._fail(job, _rebuild_error("an item", exc))
                    # The worker is still running it (a stream would wait for credit
                    # forever): stop it, as for a cancelled task.
                    self._stop_running(worker, msg.id)
                else:
                    if job.mode != MODE_STREAM:
                        # The next results of a map chunk: each counts as completed now,
                        # and a retry after a crash runs only the items after them.
                        job.delivered += len(item)
                        self.completed += len(item)
                    job.on_item(item)
        elif isinstance(msg, _wire.End):
            job = worker.jobs.pop(msg.id, None)
            if job is not None:
                self._left_worker(worker, job)
                self._succeed(job, None)
        elif isinstance(msg, _wire.Output):
            worker.output.write(msg)
        elif isinstance(msg, _wire.Log):
            _relay.emit_log(msg.record)
        elif isinstance(msg, _wire.Ready):
            self._on_ready(worker)
        elif isinstance(msg, _wire.InitFailed):
            error = _codec.loads_error(msg.error)
            broken = WorkerDiedError("the worker initializer failed")
            broken.__cause__ = error
            self._break(broken)

    def _left_worker(self, worker: _Worker, job: Job) -> None:
        """``job`` left ``worker``: stop its timer, learn its service time, and start the
        clock of the job that now starts in its place."""
        if job.timer is not None:
            self._stop_timer(job)
        if job.mode == MODE_CALL:
            # Adapt prefetch to the observed service time of single calls.
            elapsed = self.backend.time() - job.started
            self._service = self._service * 0.9 + elapsed * 0.1
            self._prefetch = _PREFETCH_FAST if self._service < _FAST_TASK else _PREFETCH_SLOW
        concurrency = self.config.concurrency
        jobs = worker.jobs
        if len(jobs) >= concurrency:
            nxt = next(itertools.islice(jobs.values(), concurrency - 1, None))
            if nxt.started == 0.0:
                self._start_clock(nxt)

    # --- resolution -------------------------------------------------------------------------

    def _succeed(self, job: Job, value: Any) -> None:
        job.state = DONE
        job.value = value
        if job.mode == MODE_MAP or job.mode == MODE_STARMAP:
            self.completed += len(value)  # the chunk's last results: each item counts
        else:
            self.completed += 1
        self._resolved(job)

    def _fail(self, job: Job, error: BaseException) -> None:
        if job.finished():
            return
        self._stop_timer(job)
        job.state = FAILED
        job.error = error
        job.error_tb = error.__traceback__
        self.failed += 1
        self._resolved(job)

    def _resolved(self, job: Job) -> None:
        release = job.release
        if release is not None:
            job.release = None
            try:
                release()
            except (OSError, AioprocError):
                pass  # the hub is gone (and the block with it), or refuses: nothing to free
        future = job.future
        if future is not None and not future.done():
            future.set_result(None)
        on_done = job.on_done
        if on_done is not None:
            on_done(job)
        if self._idle_futures:
            self._check_idle()

    def _answered(self, worker: _Worker, ahead: list[int]) -> bool:
        """Has ``worker`` answered the jobs ``ahead`` since, so that it may run the next?

        The replies the parent has not read yet tell: so the Cancel just queued for the
        next job goes out first, then the pipe is read. A worker that had not answered by
        then reads that Cancel before it starts the job, and skips it; one that had may be
        running the job, which a worker running one task at a time cannot interrupt.
        """
        worker.flush(self.backend)
        if not worker.closed:
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
                self._stop_timer(job)  # a retried job's clock restarts on its next worker
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

    # --- waiting for the pool ---------------------------------------------------------------

    def _outstanding(self) -> bool:
        """Is any job other than a stream queued or running?

        Streams are driven by their consumer; one that nobody reads any more would never
        end, so a closing pool does not wait for streams (it aborts them).
        """
        if any(job.state == QUEUED and job.mode != MODE_STREAM for job in self.queue):
            return True
        return any(
            job.mode != MODE_STREAM for worker in self.workers for job in worker.jobs.values()
        )

    def _check_idle(self) -> None:
        if self._idle_futures and not self._outstanding():
            futures, self._idle_futures = self._idle_futures, []
            for future in futures:
                if not future.done():
                    future.set_result(None)

    async def wait_idle(self) -> None:
        """Wait until no job is queued or running."""
        while self._outstanding():
            future = self.backend.create_future()
            self._idle_futures.append(future)
            await future

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
        pending: list[Future] = []
        for worker in list(self.workers):
            future = self.backend.create_future()
            worker.exit_callbacks.append(functools.partial(_set_done, future))
            pending.append(future)
            worker.accepting = False
            worker.replaced = True
            if cancel:
                worker.proc.kill()
            else:
                self.send_control(worker, _wire.Stop())
        if pending:
            timer = self.backend.call_later(_STOP_GRACE, self.kill_all)
            try:
                for future in pending:
                    await future
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
        backend = self.backend if self.backend.is_running() else None
        for worker in list(self.workers):
            if backend is not None:
                # Before the reap closes it. A loop closed meanwhile (uvloop) raises.
                with contextlib.suppress(RuntimeError):
                    backend.remove_reader(worker.proc.sentinel)
            try:
                worker.proc.reap()  # it was just killed: this does not wait long
            except OSError:  # pragma: no cover - reaped elsewhere already
                pass
            worker.close(backend)
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


def _hub_address() -> dict[str, Any]:
    """The IPC hub workers should use: IPC objects they create live there.

    The hub is created now if need be (a listening socket, no thread): a worker that
    creates a queue must be able to hand it back, which only a hub that the parent's event
    loop serves allows.
    """
    known = _client.known_address()
    if known is None:
        if _role.in_worker:
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
    except Exception:  # pragma: no cover - a user's exception type that refuses copying
        return error
    copied.__cause__ = error.__cause__
    copied.__suppress_context__ = error.__suppress_context__
    return copied


def _rebuild_error(what: str, exc: BaseException) -> SerializationError:
    error = SerializationError(f"cannot rebuild {what}: {exc!r}")
    error.__cause__ = exc
    return error


def _set_done(future: Future) -> None:
    if not future.done():
        future.set_result(None)


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


_live: weakref.WeakSet[Dispatcher] = weakref.WeakSet()


def terminate_all() -> None:
    """Kill every worker of every pool still open, then the fork server (at exit)."""
    for dispatcher in list(_live):
        # Failing its jobs runs the public layer's callbacks, which may raise now that a
        # loop is closed: one pool's failure must not leave another's workers running.
        try:
            dispatcher.terminate_sync()
        except Exception:  # pragma: no cover
            _log.exception("cannot shut down %r at exit", dispatcher)
    _spawn.shutdown_forkserver()


atexit.register(terminate_all)
