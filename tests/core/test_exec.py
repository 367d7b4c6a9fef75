"""Running calls in a worker (``_exec.Executor``), driven directly: no process is started.

Replies the executor queues or sends go into an ordinary pipe, read back here. The partial
results thread of map chunks is kept from starting (the leak guard would see it outlive the
test): a chunk's results then leave from the thread that runs it, as they do in a worker
whose chunk makes progress.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import aioproc
from aioproc._core import _codec, _exec, _wire


class Harness:
    """An executor whose result pipe this test reads."""

    def __init__(self, executor_type: type[_exec.Executor] = _exec.Executor) -> None:
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.executor = executor_type(-1, write_fd)
        self.executor.partials.thread = threading.current_thread()  # see the module docstring
        self.reader = _wire.FrameReader()

    def define(self, fn_id: int, fn: Any) -> None:
        assert self.executor.handle(_wire.Define(fn_id, _codec.dumps_function(fn))) is None

    def sent(self) -> list[_wire.Message]:
        """The frames written to the pipe so far, queued ones included."""
        self.executor.channel.flush()
        out: list[_wire.Message] = []
        while True:
            try:
                data = os.read(self.read_fd, 1 << 16)
            except BlockingIOError:
                return out
            out += self.reader.feed(data)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.executor.channel._fd)


@pytest.fixture
def harness() -> Iterator[Harness]:
    made = Harness()
    yield made
    made.close()


def call(task_id: int, fn_id: int, payload: Any, mode: int = _wire.MODE_CALL) -> _wire.Call:
    return _wire.Call(task_id, fn_id, _codec.dumps(payload), mode)


def add(a: int, b: int = 0) -> int:
    return a + b


def square(x: int) -> int:
    return x * x


def fail(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


async def add_async(a: int, b: int) -> int:
    return a + b


def unpicklable() -> Any:
    return threading.Lock()


def test_a_call_returns_its_result(harness: Harness) -> None:
    harness.define(1, add)
    reply = harness.executor.handle(call(7, 1, ((1,), {"b": 2})))
    assert isinstance(reply, _wire.Done)
    assert (reply.id, _codec.loads(reply.value)) == (7, 3)


def test_a_coroutine_function_runs_to_its_result(harness: Harness) -> None:
    harness.define(1, add_async)
    reply = harness.executor.handle(call(7, 1, ((1, 2), None)))
    assert isinstance(reply, _wire.Done)
    assert _codec.loads(reply.value) == 3
    assert harness.executor.loop is not None
    harness.executor.loop.close()


def test_an_error_is_the_tasks_failure_with_its_traceback(harness: Harness) -> None:
    harness.define(1, fail)
    reply = harness.executor.handle(call(7, 1, ((3,), None)))
    assert isinstance(reply, _wire.Failed)
    error = _codec.loads_error(reply.error)
    assert isinstance(error, ValueError)
    assert "three" in str(error)
    assert 'raise ValueError("three")' in str(error.__cause__)


def test_a_function_that_did_not_unpickle_fails_each_call(harness: Harness) -> None:
    assert harness.executor.handle(_wire.Define(1, b"not a pickle")) is None
    reply = harness.executor.handle(call(7, 1, ((), None)))
    assert isinstance(reply, _wire.Failed)
    error = _codec.loads_error(reply.error)
    assert isinstance(error, aioproc.SerializationError)
    assert "cannot rebuild the function" in str(error)


def test_arguments_that_do_not_unpickle_fail_the_task(harness: Harness) -> None:
    harness.define(1, add)
    reply = harness.executor.handle(_wire.Call(7, 1, b"junk"))
    assert isinstance(reply, _wire.Failed)
    error = _codec.loads_error(reply.error)
    assert isinstance(error, aioproc.SerializationError)
    assert "cannot rebuild the arguments" in str(error)


def test_a_result_that_does_not_pickle_is_a_serialization_error(harness: Harness) -> None:
    harness.define(1, unpicklable)
    reply = harness.executor.handle(call(7, 1, ((), None)))
    assert isinstance(reply, _wire.Failed)
    error = _codec.loads_error(reply.error)
    assert isinstance(error, aioproc.SerializationError)
    assert "cannot send the result of type '_thread.lock' back" in str(error)


def test_a_reply_over_the_frame_limit_fails_its_task(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_wire, "MAX_FRAME", 1 << 14)
    harness.executor.put_reply(_wire.Done(7, b"x" * (1 << 15)))
    (reply,) = harness.sent()
    assert isinstance(reply, _wire.Failed)
    assert reply.id == 7
    assert "exceeds the frame limit" in str(_codec.loads_error(reply.error))


@pytest.mark.parametrize("mode", [_wire.MODE_MAP, _wire.MODE_STARMAP])
def test_a_map_chunk_returns_every_result_in_order(harness: Harness, mode: int) -> None:
    harness.define(1, square if mode == _wire.MODE_MAP else add)
    items: list[Any] = list(range(200)) if mode == _wire.MODE_MAP else [(x, x) for x in range(200)]
    reply = harness.executor.handle(call(7, 1, items, mode))
    assert isinstance(reply, _wire.Done)
    results = []
    for msg in harness.sent():  # the batches sent ahead, if any
        assert isinstance(msg, _wire.Item)
        results += _codec.loads(msg.value)
    results += _codec.loads(reply.value)
    assert results == [x * x if mode == _wire.MODE_MAP else 2 * x for x in range(200)]


def test_a_retried_map_chunk_skips_what_the_parent_has(harness: Harness) -> None:
    harness.define(1, square)
    msg = _wire.Call(7, 1, _codec.dumps([1, 2, 3, 4]), _wire.MODE_MAP, skip=3)
    reply = harness.executor.handle(msg)
    assert isinstance(reply, _wire.Done)
    assert _codec.loads(reply.value) == [16]


def test_a_failing_map_chunk_delivers_the_results_before_the_failure(harness: Harness) -> None:
    harness.define(1, fail)
    reply = harness.executor.handle(call(7, 1, [0, 1, 2, 3, 4], _wire.MODE_MAP))
    assert isinstance(reply, _wire.Failed)
    assert "three" in str(_codec.loads_error(reply.error))
    results = []
    for msg in harness.sent():
        assert isinstance(msg, _wire.Item)
        results += _codec.loads(msg.value)
    assert results == [0, 1, 2]


class _AckingExecutor(_exec.Executor):
    """Reads grant the credit of stream 7 (as the parent's Acks would), and are counted."""

    reads = 0

    def read(self) -> bool:
        self.reads += 1
        self.inbox.append(_wire.Ack(7, _wire.STREAM_WINDOW // 2))
        return True


def test_a_stream_waits_for_credit_beyond_its_window() -> None:
    made = Harness(_AckingExecutor)
    try:
        executor = made.executor
        assert isinstance(executor, _AckingExecutor)
        made.define(1, numbers)
        n = 2 * _wire.STREAM_WINDOW + 1
        executor.inbox.append(_wire.Stop())  # parked, not lost, while credit is awaited
        assert executor.handle(call(7, 1, ((n,), None), _wire.MODE_STREAM)) is None
        sent = made.sent()
        assert [_codec.loads(m.value) for m in sent[:-1]] == list(range(n))  # type: ignore[union-attr]
        assert sent[-1] == _wire.End(7)
        # Credit runs out after the window, then every half window: 64, 96, 128.
        assert executor.reads == 3
        assert list(executor.inbox) == [_wire.Stop()]
    finally:
        made.close()


def test_a_stream_needs_a_generator(harness: Harness) -> None:
    harness.define(1, add)
    reply = harness.executor.handle(call(7, 1, ((1, 2), None), _wire.MODE_STREAM))
    assert isinstance(reply, _wire.Failed)
    assert "stream() needs a generator function; got a 'int'" in str(
        _codec.loads_error(reply.error)
    )


def test_max_tasks_counts_every_call_run_or_cancelled(harness: Harness) -> None:
    executor = harness.executor
    executor.max_tasks = 3
    harness.define(1, add)
    executor.cancelled.add(8)
    assert executor.handle(call(7, 1, ((1,), None))) is not None
    assert executor.handle(call(8, 1, ((1,), None))) is None  # cancelled: skipped, counted
    assert not executor.stopping
    assert executor.handle(call(9, 1, ((1,), None))) is not None
    assert executor.stopping
    assert executor.done == 3
    assert executor.cancelled == set()


def test_stop_and_drop(harness: Harness) -> None:
    executor = harness.executor
    harness.define(1, add)
    assert executor.handle(_wire.Drop(1)) is None
    assert 1 not in executor.functions
    assert executor.handle(_wire.Stop()) is None
    assert executor.stopping
