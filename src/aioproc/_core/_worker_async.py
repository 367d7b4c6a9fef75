"""The worker loop for ``concurrency > 1``: coroutine tasks share one event loop.

The task pipe is read by the loop itself (``add_reader``). Calls start in arrival order and
at most ``concurrency`` run at once (a FIFO semaphore), which is the order the parent's
dispatcher assumes when it decides what was running if the worker dies. A ``Cancel`` frame
cancels the coroutine of that call; replies produced in one loop turn leave in one write.
Plain functions run inline and hold the loop while they run.
"""

from __future__ import annotations

import asyncio
import os
import time
from inspect import isasyncgen, iscoroutine
from typing import TYPE_CHECKING, Any, NoReturn

from . import _codec, _payload, _wire
from ._exec import (
    PARTIAL_EVERY,
    READ_SIZE,
    Executor,
    answer,
    check_generator,
    load_payload,
)

if TYPE_CHECKING:
    from collections.abc import Callable


class _AsyncServer:
    def __init__(self, worker: Executor) -> None:
        self.worker = worker
        self.loop = worker.event_loop()
        asyncio.set_event_loop(self.loop)
        self.slots = asyncio.Semaphore(worker.concurrency)
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.credits: dict[int, int] = {}
        self.credit_events: dict[int, asyncio.Event] = {}
        self.flush_scheduled = False
        self.finished: asyncio.Future[None] = self.loop.create_future()

    # --- input ----------------------------------------------------------------------------

    def on_readable(self) -> None:
        worker = self.worker
        try:
            data = os.read(worker.task_fd, READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.loop.remove_reader(worker.task_fd)
            worker.stopping = True
            self.maybe_finish()
            return
        for msg in worker.reader.feed(data):
            self.handle(msg)

    def handle(self, msg: _wire.Message) -> None:
        worker = self.worker
        if isinstance(msg, _wire.Call):
            if msg.id in worker.cancelled:
                worker.cancelled.discard(msg.id)
                worker.count_call()
                self.maybe_finish()
                return
            self.tasks[msg.id] = self.loop.create_task(self.run_call(msg))
        elif isinstance(msg, _wire.Cancel):
            task = self.tasks.get(msg.id)
            if task is not None:
                task.cancel()
            else:
                worker.cancelled.add(msg.id)
        elif isinstance(msg, _wire.Ack):
            if msg.id in self.credits:
                self.credits[msg.id] += msg.n
                self.credit_events[msg.id].set()
        elif isinstance(msg, _wire.Stop):
            worker.stopping = True
            self.maybe_finish()
        else:
            worker.handle(msg)

    # --- output ---------------------------------------------------------------------------

    def reply(self, msg: _wire.Message, *, now: bool = False) -> None:
        """Queue ``msg`` for the parent; written at the end of this loop turn, or at once
        with ``now`` (the end of a task: if another task kills the process in this same
        turn, this one's outcome must not be lost with it)."""
        self.worker.put_reply(msg)
        if now:
            self.flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        self.worker.flush_output()
        self.worker.channel.flush()

    # --- running --------------------------------------------------------------------------

    async def run_call(self, msg: _wire.Call) -> None:
        worker = self.worker
        try:
            async with self.slots:
                answer = await self.execute(msg)
        except asyncio.CancelledError as exc:
            # The parent has settled this call already; the reply only tells it that the
            # task did stop, so it need not kill this worker.
            answer = _wire.Failed(msg.id, _codec.dumps_error(exc))
        finally:
            self.tasks.pop(msg.id, None)
            worker.count_call()
        if answer is not None:
            self.reply(answer, now=True)
        self.maybe_finish()

    async def execute(self, msg: _wire.Call) -> _wire.Message | None:
        worker = self.worker
        loan = None
        try:
            try:
                fn = worker.functions[msg.fn]
                payload, loan = load_payload(msg.args)
                mode = msg.mode
                if mode == _wire.MODE_CALL:
                    args, kwargs = payload
                    result = await _maybe_await(fn(*args, **(kwargs or {})))
                elif mode == _wire.MODE_MAP or mode == _wire.MODE_STARMAP:
                    return await self.run_chunk(msg, fn, payload)
                else:
                    args, kwargs = payload
                    await self.stream(msg.id, fn, args, kwargs or {})
                    return None
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                return _wire.Failed(msg.id, _codec.dumps_error(exc))
            return answer(msg.id, result)
        finally:
            if loan is not None:
                _payload.end_loan(loan)  # the result is pickled by now (or never will be)

    async def run_chunk(
        self, msg: _wire.Call, fn: Callable[..., Any], items: list[Any]
    ) -> _wire.Message:
        """A map chunk, its results sent as they finish (see ``Executor.run_chunk``)."""
        partials = self.worker.partials
        results = partials.begin(msg.id)
        star = msg.mode == _wire.MODE_STARMAP
        todo = items[msg.skip :] if msg.skip else items
        try:
            last = len(todo) - 1
            for index, x in enumerate(todo):
                results.append(await _maybe_await(fn(*x) if star else fn(x)))
                if index < last and (
                    not index or time.perf_counter() - partials.last_send >= PARTIAL_EVERY
                ):
                    partials.send_now(msg.id)  # the first result, then one batch per round
        except asyncio.CancelledError:
            partials.end(msg.id)
            raise
        except BaseException as exc:
            self.worker.flush_output()
            self.worker.put_leftover(msg.id, partials.end(msg.id))
            return _wire.Failed(msg.id, _codec.dumps_error(exc))
        return answer(msg.id, partials.end(msg.id))

    async def stream(
        self, task_id: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.credits[task_id] = _wire.STREAM_WINDOW
        event = self.credit_events[task_id] = asyncio.Event()
        gen = fn(*args, **kwargs)
        check_generator(gen)
        try:
            if isasyncgen(gen):
                async for item in gen:
                    await self.emit(task_id, item, event)
            else:
                for item in gen:
                    await self.emit(task_id, item, event)
            self.reply(_wire.End(task_id), now=True)
        finally:
            del self.credits[task_id], self.credit_events[task_id]

    async def emit(self, task_id: int, item: Any, event: asyncio.Event) -> None:
        self.reply(_wire.Item(task_id, _codec.dumps(item)))
        self.credits[task_id] -= 1
        while self.credits[task_id] <= 0:
            event.clear()
            await event.wait()

    def maybe_finish(self) -> None:
        if self.worker.stopping and not self.tasks and not self.finished.done():
            self.finished.set_result(None)

    async def main(self) -> None:
        self.loop.add_reader(self.worker.task_fd, self.on_readable)
        # Frames read before the switch to this loop (during start-up) are handled first.
        while self.worker.inbox:
            self.handle(self.worker.inbox.popleft())
        await self.finished
        self.flush()


async def _maybe_await(value: Any) -> Any:
    if iscoroutine(value):
        return await value
    return value


def serve_async(worker: Executor) -> NoReturn:
    os.set_blocking(worker.task_fd, False)
    server = _AsyncServer(worker)
    server.loop.run_until_complete(server.main())
    worker.exit(0)
