"""The dispatcher's decisions, without processes or an event loop.

A ``FakeBackend`` stands in for the loop (callbacks run when the test says, a clock the test
moves) and each "worker" is a pair of pipes the test reads and answers: the frames the
dispatcher writes are the decisions under test (which worker gets a call, how many calls a
worker holds, what a cancellation or a death sends), and the job states and callbacks are
what the public layer sees.
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from aioproc import PoolClosedError, WorkerDiedError
from aioproc._core import _codec, _wire
from aioproc._core._engine import MODE_MAP, Engine, JobState, JobView, PoolConfig


def double(x: int) -> int:
    return 2 * x


def triple(x: int) -> int:
    return 3 * x


class _Timer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Future:
    def __init__(self) -> None:
        self._done = False
        self.value: Any = None

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def set_result(self, value: Any) -> None:
        assert not self._done
        self._done = True
        self.value = value

    def set_exception(self, exc: BaseException) -> None:
        raise AssertionError("the dispatcher never fails a future")

    def cancel(self) -> bool:
        return False

    def __await__(self) -> Generator[Any, None, Any]:
        while not self._done:
            yield self
        return self.value


class FakeBackend:
    """The loop as the dispatcher sees it, run by hand."""

    name = "fake"

    def __init__(self) -> None:
        self.now = 100.0
        self.readers: dict[int, Callable[[], object]] = {}
        self.writers: dict[int, Callable[[], object]] = {}
        self.soon: collections.deque[Callable[[], object]] = collections.deque()
        self.timers: list[_Timer] = []
        self.default_pool: Any = None

    def add_reader(self, fd: int, callback: Callable[[], object]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def add_writer(self, fd: int, callback: Callable[[], object]) -> None:
        self.writers[fd] = callback

    def remove_writer(self, fd: int) -> None:
        self.writers.pop(fd, None)

    def call_soon(self, callback: Callable[[], object]) -> None:
        self.soon.append(callback)

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Timer:
        timer = _Timer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def create_future(self) -> _Future:
        return _Future()

    def start_task(self, coro_fn: Any) -> Any:
        raise AssertionError("not used by these tests")

    def time(self) -> float:
        return self.now

    def is_running(self) -> bool:
        return True

    def is_current(self) -> bool:
        return True

    def cancel_pending(self) -> bool:
        return False

    async def checkpoint(self) -> None:
        pass

    def turn(self) -> None:
        """Run what was scheduled for the end of this loop turn."""
        while self.soon:
            self.soon.popleft()()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for timer in sorted(self.timers, key=lambda t: t.when):
            if timer.when <= self.now and not timer.cancelled:
                timer.cancelled = True
                timer.callback()
        self.timers = [t for t in self.timers if not t.cancelled]
        self.turn()


class FakeProcess:
    """A started "worker": its ends of the pipes, and a sentinel the test fires."""

    _pids = iter(range(70001, 80000))

    def __init__(self, task_r: int, result_w: int) -> None:
        self.pid = next(self._pids)
        self.task_r = task_r
        self.result_w = result_w
        os.set_blocking(task_r, False)
        self.sentinel, self._sentinel_w = os.pipe()
        self.exitcode: int | None = None
        self.signals: list[int] = []
        self.code_on_reap = 0
        self.reader = _wire.FrameReader()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.exitcode is None:
            self.signals.append(sig)
            self.code_on_reap = -sig

    def reap(self) -> int:
        if self.exitcode is None:
            self.exitcode = self.code_on_reap
            self.close()
        return self.exitcode

    def close(self) -> None:
        for fd in (self.sentinel, self._sentinel_w, self.task_r, self.result_w):
            if fd >= 0:
                os.close(fd)
        self.sentinel = self._sentinel_w = self.task_r = self.result_w = -1

    # --- the test's side ------------------------------------------------------------------

    def received(self) -> list[Any]:
        """The frames written to this worker since last asked (Config excluded)."""
        try:
            data = os.read(self.task_r, 1 << 20)
        except BlockingIOError:
            return []
        return [m for m in self.reader.feed(data) if not isinstance(m, _wire.Config)]

    def calls(self) -> list[int]:
        return [m.id for m in self.received() if isinstance(m, _wire.Call)]


class Rig:
    """An engine on a fake backend, with the fake workers it started."""

    def __init__(self, **settings: Any) -> None:
        self.backend = FakeBackend()
        self.procs: list[FakeProcess] = []
        config = {
            "max_workers": 1,
            "concurrency": 1,
            "max_tasks_per_child": None,
            "task_timeout": None,
            "retries": 0,
            "start_method": "fork",
        }
        config.update(settings)
        self.engine = Engine(self.backend, PoolConfig(**config), launch=self._launch)
        self.engine.start()
        self.d = self.engine.dispatcher

    def _launch(self, method: str, task_r: int, result_w: int) -> Any:
        proc = FakeProcess(task_r, result_w)
        self.procs.append(proc)
        return proc

    def call(self, fn: Callable[..., Any] = double, *args: Any) -> JobView:
        return self.engine.call(fn, args or (1,), {})

    def reply(self, proc: FakeProcess, *msgs: _wire.Message) -> None:
        """``proc`` writes ``msgs``; the loop then sees its result pipe readable."""
        for msg in msgs:
            os.write(proc.result_w, _wire.encode(msg))
        worker = next(w for w in self.d.workers if w.proc is proc)
        self.backend.readers[worker.result_fd]()
        self.backend.turn()

    def ready(self, proc: FakeProcess) -> None:
        self.reply(proc, _wire.Ready(proc.pid))

    def done(self, proc: FakeProcess, job: JobView, value: Any) -> None:
        self.reply(proc, _wire.Done(job.id, _codec.dumps(value)))

    def die(self, proc: FakeProcess, code: int = -signal.SIGKILL) -> None:
        """``proc`` exits: its sentinel becomes readable."""
        proc.code_on_reap = code
        self.backend.readers[proc.sentinel]()
        self.backend.turn()

    def close(self) -> None:
        self.engine.terminate_sync()
        for proc in self.procs:
            proc.close()


@pytest.fixture
def engine_factory() -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**settings: Any) -> Rig:
        engine = Rig(**settings)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


# --- picking a worker ---------------------------------------------------------------------


def test_each_call_goes_to_an_idle_worker_first(engine_factory: Callable[..., Rig]) -> None:
    e = engine_factory(max_workers=3)
    jobs = [e.call(double, i) for i in range(3)]
    e.backend.turn()
    assert [p.calls() for p in e.procs] == [[jobs[0].id], [jobs[1].id], [jobs[2].id]]
    assert all(job.state == JobState.SENT for job in jobs)


def test_a_call_waits_in_the_queue_until_a_worker_answers(
    engine_factory: Callable[..., Rig],
) -> None:
    e = engine_factory(max_workers=1)
    (proc,) = e.procs
    e.ready(proc)
    first, second = e.call(double, 1), e.call(double, 2)
    e.backend.turn()
    assert proc.calls() == [first.id]  # no prefetch before a task was timed
    assert second.state == JobState.QUEUED
    e.backend.advance(0.1)  # a slow task: still no prefetch
    e.done(proc, first, 2)
    assert first.outcome() == 2
    assert proc.calls() == [second.id]


def test_tiny_tasks_are_prefetched_and_slow_ones_are_not(
    engine_factory: Callable[..., Rig],
) -> None:
    e = engine_factory(max_workers=1)
    (proc,) = e.procs
    e.ready(proc)
    for i in range(20):  # instant answers: the service time falls under the tiny mark
        job = e.call(double, i)
        e.backend.turn()
        e.done(proc, job, 2 * i)
    proc.received()
    burst = [e.call(double, i) for i in range(10)]
    e.backend.turn()
    assert proc.calls() == [job.id for job in burst]  # all in the pipe at once
    for job in burst:
        e.backend.advance(0.5)  # each takes half a second: tasks are no longer tiny
        e.done(proc, job, 0)
    proc.received()
    slow = [e.call(double, i) for i in range(3)]
    e.backend.turn()
    assert proc.calls() == [slow[0].id]
    assert [job.state for job in slow] == [JobState.SENT, JobState.QUEUED, JobState.QUEUED]


def test_a_function_is_defined_once_per_worker(engine_factory: Callable[..., Rig]) -> None:
    e = engine_factory(max_workers=1)
    (proc,) = e.procs
    for fn in (double, double, triple, double):
        job = e.call(fn, 1)
        e.backend.turn()
        frames = proc.received()
        e.done(proc, job, 0)
        defines = [m.fn for m in frames if isinstance(m, _wire.Define)]
        (call,) = [m for m in frames if isinstance(m, _wire.Call)]
        assert defines in ([], [call.fn])
    assert e.engine.function_id(double) != e.engine.function_id(triple)


# --- cancelling ---------------------------------------------------------------------------


def test_a_cancelled_queued_call_is_never_sent(engine_factory: Callable[..., Rig]) -> None:
    e = engine_factory(max_workers=1)
    (proc,) = e.procs
    first, second = e.call(double, 1), e.call(double, 2)
    seen: list[JobView] = []
    e.engine.on_done(second, seen.append)
    e.engine.cancel(second)
    assert second.state == JobState.CANCELLED and seen == [second]
    e.backend.advance(1.0)
    e.done(proc, first, 2)
    e.backend.turn()
    assert second.id not in proc.calls()
    assert proc.signals == []


def test_cancelling_a_running_call_kills_and_replaces_its_worker(
    engine_factory: Callable[..., Rig],
) -> None:
    e = engine_factory(max_workers=1)
    (proc,) = e.procs
    job = e.call(double, 1)
    e.backend.turn()
    e.engine.cancel(job)
    assert proc.signals == [signal.SIGKILL]
    e.die(proc)
    assert job.state == JobState.CANCELLED  # not failed: the death was ours
    assert len(e.procs) == 2 and e.d.restarts == 1
    again = e.call(double, 2)
    e.backend.turn()
    assert e.procs[1].calls() == [again.id]


def test_cancelling_a_prefetched_call_tells_the_worker_to_skip_it(
    engine_factory: Callable[..., Rig],
) -> None:
    e = engine_factory(max_workers=1)
    (proc,) = e.procs
    e.d._prefetch = 32  # as after a run of tiny tasks
    running, waiting = e.call(double, 1), e.call(double, 2)
    e.backend.turn()
    assert proc.calls() == [running.id, waiting.id]
    e.engine.cancel(waiting)
    e.backend.turn()
    assert [m for m in proc.received() if isinstance(m, _wire.Cancel)] == [_wire.Cancel(waiting.id)]
    assert proc.signals == []  # the task ahead of it runs on
    e.done(proc, running, 2)
    assert running.outcome() == 2


def test_concurrent_workers_cancel_a_coroutine_in_place_then_kill_if_it_ignores_it(
    engine_factory: Callable[..., Rig],
) -> None:
    e = engine_factory(max_workers=1, concurrency=2)
    (proc,) = e.procs
    e.ready(proc)
    stubborn, other = e.call(double, 1), e.call(double, 2)
    e.backend.turn()
    e.engine.cancel(stubborn)
    e.backend.turn()
    assert _wire.Cancel(stubborn.id) in proc.received()
    assert proc.signals == []
    e.backend.advance(5.0)  # past the grace period, no answer
    assert proc.signals == [signal.SIGKILL]
    e.die(proc)
    assert other.state == JobState.FAILED
    assert isinstance(other.error, WorkerDiedError)


# --- deaths and retries -------------------------------------------------------------------


def test_a_death_fails_the_running_call_and_requeues_the_waiting_ones(
    engine_factory: Callable[..., Rig],
) -> None:
    e = engine_factory(max_workers=1)
    (proc,) = e.procs
    e.d._prefetch = 32
    running, waiting = e.call(double, 1), e.call(double, 2)
    e.backend.turn()
    e.die(proc, code=-signal.SIGSEGV)
    assert running.state == JobState.FAILED
    assert isinstance(running.error, WorkerDiedError)
    assert "SIGSEGV" in str(running.error)
    assert waiting.state == JobState.SENT  # on the replacement, never having run
    assert e.procs[1].calls() == [waiting.id]
    assert e.d.failed == 1 and e.d.restarts == 1


def test_a_retried_call_runs_again_and_fails_once_its_retries_are_spent(
    engine_factory: Callable[..., Rig],
) -> None:
    e = engine_factory(max_workers=1, retries=1)
    job = e.call(double, 1)
    e.backend.turn()
    e.die(e.procs[0])
    assert job.state == JobState.SENT and e.procs[1].calls() == [job.id]
    e.die(e.procs[1], code=3)
    assert job.state == JobState.FAILED
    assert "exited with code 3" in str(job.error)


def test_a_retried_map_chunk_skips_the_results_already_delivered(
    engine_factory: Callable[..., Rig],
) -> None:
    e = engine_factory(max_workers=1, retries=1)
    got: list[list[int]] = []
    fn_id = e.engine.function_id(double)
    chunk = e.engine.chunk(fn_id, [1, 2, 3, 4], 0, MODE_MAP, on_item=got.append)
    e.engine.submit(chunk)
    e.backend.turn()
    e.reply(e.procs[0], _wire.Item(chunk.id, _codec.dumps([2, 4])))
    assert got == [[2, 4]] and e.d.completed == 2
    e.die(e.procs[0])
    (call,) = [m for m in e.procs[1].received() if isinstance(m, _wire.Call)]
    assert (call.id, call.skip) == (chunk.id, 2)
    e.done(e.procs[1], chunk, [6, 8])
    assert chunk.outcome() == [6, 8] and e.d.completed == 4


def test_an_initializer_failure_breaks_the_pool(engine_factory: Callable[..., Rig]) -> None:
    e = engine_factory(max_workers=1)
    queued = [e.call(double, i) for i in range(2)]
    e.backend.turn()
    e.reply(e.procs[0], _wire.InitFailed(_codec.dumps_error(ValueError("no config"))))
    assert queued[1].state == JobState.FAILED
    with pytest.raises(PoolClosedError, match="broken"):
        e.call(double, 3)


# --- timeouts -----------------------------------------------------------------------------


def test_the_clock_starts_when_the_worker_is_ready(engine_factory: Callable[..., Rig]) -> None:
    e = engine_factory(max_workers=1, task_timeout=1.0)
    (proc,) = e.procs
    job = e.call(double, 1)
    e.backend.turn()
    e.backend.advance(5.0)  # a slow start-up (spawn, an initializer) is not the task's time
    assert job.state == JobState.SENT
    e.ready(proc)
    e.backend.advance(0.5)
    assert job.state == JobState.SENT
    e.backend.advance(0.6)
    assert job.state == JobState.FAILED
    assert isinstance(job.error, TimeoutError)
    assert proc.signals == [signal.SIGKILL]


def test_a_reply_before_the_deadline_stops_the_clock(engine_factory: Callable[..., Rig]) -> None:
    e = engine_factory(max_workers=1, task_timeout=1.0)
    (proc,) = e.procs
    e.ready(proc)
    job = e.call(double, 1)
    e.backend.turn()
    e.backend.advance(0.9)
    e.done(proc, job, 2)
    e.backend.advance(10.0)
    assert job.outcome() == 2 and proc.signals == []


# --- the public layer's view --------------------------------------------------------------


def test_a_job_is_resolved_once_and_a_late_reply_is_dropped(
    engine_factory: Callable[..., Rig],
) -> None:
    e = engine_factory(max_workers=1, concurrency=2)
    (proc,) = e.procs
    job = e.call(double, 1)
    e.backend.turn()
    calls: list[JobView] = []
    e.engine.on_done(job, calls.append)
    e.engine.cancel(job)
    e.done(proc, job, 2)  # it finished anyway: too late
    assert job.state == JobState.CANCELLED and calls == [job]
    assert e.d.completed == 0


def test_a_job_view_is_read_only() -> None:
    # The public layer gets jobs typed as JobView, whose members are read-only properties:
    # mypy rejects an assignment there (checked by the type checks), and nothing the view
    # offers changes a job.
    members = {name for name in vars(JobView) if not name.startswith("_")}
    assert members == {"id", "state", "value", "error", "finished", "running", "outcome"}
    assert all(isinstance(vars(JobView)[m], property) for m in ("id", "state", "value", "error"))
