"""The IPC objects' state machines (_objects), and the request lifecycle (_client) on them.

Driven directly with recording waiters: no process, no event loop unless a test is about
cancellation, and no socket but the hub's own listening one.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import threading
import time
from typing import Any

import pytest

from aioproc._core import _client, _hub, _objects, _wire
from aioproc._core._objects import FALSE, OK, TRUE
from aioproc._exceptions import (
    BrokenBarrierError,
    ClosedResourceError,
    EndOfStream,
    LockOwnerDiedError,
    QueueEmpty,
    QueueFull,
    WouldBlock,
)


class Waiter:
    """Records what a state machine did with it; ``accept=False`` plays a waiter gone."""

    def __init__(self, owner: object = "p1", *, accept: bool = True) -> None:
        self.owner = owner
        self.accept = accept
        self.values: list[bytes] = []
        self.errors: list[BaseException] = []

    def resolve(self, value: bytes) -> bool:
        if not self.accept:
            return False
        self.values.append(value)
        return True

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)

    @property
    def parked(self) -> bool:
        return not self.values and not self.errors

    @property
    def value(self) -> bytes:
        assert not self.errors, self.errors
        (value,) = self.values
        return value

    @property
    def error(self) -> BaseException:
        assert not self.values, self.values
        (error,) = self.errors
        return error


def _do(state: _objects.State, op: int, arg: bytes = b"", owner: object = "p1") -> Waiter:
    waiter = Waiter(owner)
    state.handle(op, arg, waiter)
    return waiter


def _one(kind: str, **params: Any) -> Any:
    (state,) = _objects.create(kind, params, {})
    return state


# --- the registry -------------------------------------------------------------------------


def test_every_kind_is_registered_under_its_own_name() -> None:
    assert set(_objects.KINDS) == {
        "queue",
        "lock",
        "semaphore",
        "event",
        "condition",
        "barrier",
        "pipe",
        "shm",
        "dict",
        "list",
        "namespace",
    }
    for kind, cls in _objects.KINDS.items():
        assert cls.kind == kind


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown object kind 'nope'"):
        _objects.create("nope", {}, {})


def test_a_condition_needs_its_lock() -> None:
    lock = _one("lock")
    (cond,) = _objects.create("condition", {"lock": 7}, {7: lock})
    assert cond.lock is lock
    with pytest.raises(ClosedResourceError):
        _objects.create("condition", {"lock": 8}, {7: lock})


def test_unsupported_operations_fail_the_request() -> None:
    assert isinstance(_do(_one("event"), _wire.OP_GET).error, ValueError)


# --- queue --------------------------------------------------------------------------------


def test_queue_put_then_get_in_order() -> None:
    q = _one("queue", maxsize=0)
    assert _do(q, _wire.OP_PUT, b"a").value == OK
    assert _do(q, _wire.OP_PUT, b"b").value == OK
    assert _do(q, _wire.OP_GET).value == b"a"
    assert _do(q, _wire.OP_GET_NOWAIT).value == b"b"
    assert isinstance(_do(q, _wire.OP_GET_NOWAIT).error, QueueEmpty)


def test_a_waiting_getter_takes_the_put_directly() -> None:
    q = _one("queue", maxsize=0)
    getter = _do(q, _wire.OP_GET)
    assert getter.parked
    assert q.stats()["waiting_getters"] == 1
    _do(q, _wire.OP_PUT, b"x")
    assert getter.value == b"x"
    assert not q.items
    assert not q.getters


def test_a_getter_gone_is_skipped_for_the_next() -> None:
    q = _one("queue", maxsize=0)
    gone = Waiter(accept=False)
    q.handle(_wire.OP_GET, b"", gone)
    getter = _do(q, _wire.OP_GET)
    _do(q, _wire.OP_PUT, b"x")
    assert getter.value == b"x"


def test_a_full_queue_parks_putters_and_admits_them_in_order() -> None:
    q = _one("queue", maxsize=1)
    _do(q, _wire.OP_PUT, b"1")
    assert q.full()
    second = _do(q, _wire.OP_PUT, b"2")
    third = _do(q, _wire.OP_PUT, b"3")
    assert second.parked and third.parked
    assert isinstance(_do(q, _wire.OP_PUT_NOWAIT, b"x").error, QueueFull)
    assert _do(q, _wire.OP_GET).value == b"1"
    assert second.value == OK  # admitted: its item is in
    assert third.parked
    assert list(q.items) == [b"2"]
    assert q.try_get() == b"2"  # the fast path admits too
    assert third.value == OK
    assert list(q.items) == [b"3"]


def test_put_front_gives_an_item_back_first_in_line() -> None:
    q = _one("queue", maxsize=0)
    _do(q, _wire.OP_PUT, b"b")
    _do(q, _wire.OP_PUT_FRONT, b"a")
    assert list(q.items) == [b"a", b"b"]


def test_close_ends_waiters_and_lets_getters_drain() -> None:
    q = _one("queue", maxsize=1)
    _do(q, _wire.OP_PUT, b"1")
    putter = _do(q, _wire.OP_PUT, b"2")
    _do(q, _wire.OP_CLOSE)
    assert isinstance(putter.error, ClosedResourceError)
    assert isinstance(_do(q, _wire.OP_PUT, b"3").error, ClosedResourceError)
    assert _do(q, _wire.OP_GET).value == b"1"
    assert isinstance(_do(q, _wire.OP_GET).error, EndOfStream)
    empty = _one("queue", maxsize=0)
    getter = _do(empty, _wire.OP_GET)
    _do(empty, _wire.OP_CLOSE)
    assert isinstance(getter.error, EndOfStream)


def test_queue_try_post_only_when_a_put_would_just_append() -> None:
    q = _one("queue", maxsize=1)
    assert q.try_post(b"a")
    assert not q.try_post(b"b")  # full
    q.items.clear()
    getter = _do(q, _wire.OP_GET)
    assert not q.try_post(b"c")  # someone waits: a put must hand it over
    assert getter.parked
    q.cancel(getter)
    _do(q, _wire.OP_CLOSE)
    assert not q.try_post(b"d")  # closed
    assert q.try_get() is None


def test_a_cancelled_getter_gets_nothing() -> None:
    q = _one("queue", maxsize=0)
    getter = _do(q, _wire.OP_GET)
    q.cancel(getter)
    _do(q, _wire.OP_PUT, b"x")
    assert getter.parked
    assert list(q.items) == [b"x"]


def test_queue_stats() -> None:
    q = _one("queue", maxsize=2)
    _do(q, _wire.OP_PUT, b"x")
    stats = pickle.loads(_do(q, _wire.OP_STATS).value)
    assert stats == {
        "size": 1,
        "maxsize": 2,
        "waiting_getters": 0,
        "waiting_putters": 0,
        "closed": False,
        "prefetched": 0,
    }


# --- queue: items lent to consumer processes (OP_GET_MANY, OP_SETTLE) ------------------------


def _lend(q: Any, want: int, done: int = 0, owner: object = "p1") -> Waiter:
    return _do(q, _wire.OP_GET_MANY, _wire.LEND.pack(want, done), owner)


def _settle(q: Any, done: int, back: int, owner: object = "p1") -> None:
    _do(q, _wire.OP_SETTLE, _wire.LEND.pack(done, back), owner)


def _batch(waiter: Waiter) -> list[bytes]:
    return _wire.unpack_items(waiter.value)


def _size(q: Any) -> int:
    return int(pickle.loads(_do(q, _wire.OP_STATS).value)["size"])


def _filled(maxsize: int, *items: bytes) -> Any:
    q = _one("queue", maxsize=maxsize)
    for item in items:
        _do(q, _wire.OP_PUT, item)
    return q


def test_a_batch_takes_up_to_what_is_asked_and_what_is_there() -> None:
    q = _filled(0, b"a", b"b", b"c")
    assert _batch(_lend(q, 2)) == [b"a", b"b"]
    assert _batch(_lend(q, 5)) == [b"c"]
    assert list(q.lent["p1"]) == [b"a", b"b", b"c"]


def test_lent_items_count_in_the_size_until_settled() -> None:
    q = _filled(0, b"a", b"b", b"c")
    _lend(q, 2)
    assert _size(q) == 3  # two lent, one queued
    _settle(q, 1, 0)  # "a" handed out
    assert _size(q) == 2
    assert _batch(_lend(q, 4, done=1)) == [b"c"]  # "b" handed out, settled by the request
    assert _size(q) == 1
    assert list(q.lent["p1"]) == [b"c"]


def test_settled_back_items_return_first_in_line_in_order() -> None:
    q = _filled(0, b"a", b"b", b"c", b"d")
    _lend(q, 3)
    _settle(q, 1, 2)  # "a" handed out; "b", "c" given back
    assert list(q.items) == [b"b", b"c", b"d"]
    assert "p1" not in q.lent
    assert _size(q) == 3


def test_a_dead_consumer_s_items_return_first_in_line_in_order() -> None:
    q = _filled(0, b"a", b"b", b"c", b"d", b"e")
    _lend(q, 2, owner="p1")
    _lend(q, 2, owner="p2")
    q.owner_gone("p1")
    assert list(q.items) == [b"a", b"b", b"e"]
    q.handles_gone("p2")  # its last handle on the queue gone: the same
    assert list(q.items) == [b"c", b"d", b"a", b"b", b"e"]
    assert q.n_lent == 0 and not q.lent


def test_items_coming_back_go_to_waiting_getters_first() -> None:
    q = _filled(0, b"a")
    _lend(q, 1, owner="p1")
    other = _lend(q, 4, owner="p2")  # parks: nothing queued
    assert other.parked
    q.owner_gone("p1")
    assert _batch(other) == [b"a"]
    assert list(q.lent["p2"]) == [b"a"] and not q.items


def test_a_parked_batch_get_is_lent_the_next_put() -> None:
    q = _one("queue", maxsize=0)
    getter = _lend(q, 8)
    _do(q, _wire.OP_PUT, b"x")
    assert _batch(getter) == [b"x"]
    assert list(q.lent["p1"]) == [b"x"]
    gone = _lend(q, 8)
    q.cancel(gone)
    _do(q, _wire.OP_PUT, b"y")
    assert gone.parked and list(q.items) == [b"y"]


def test_a_batch_for_a_waiter_gone_stays_queued() -> None:
    q = _filled(0, b"a", b"b")
    waiter = Waiter(accept=False)
    q.handle(_wire.OP_GET_MANY, _wire.LEND.pack(2, 0), waiter)
    assert list(q.items) == [b"a", b"b"] and not q.lent


def test_lent_items_hold_a_bounded_queue_s_room_until_settled() -> None:
    q = _filled(2, b"a", b"b")
    _lend(q, 2)
    putter = _do(q, _wire.OP_PUT, b"c")
    assert putter.parked  # two lent, none handed out yet: still full
    assert isinstance(_do(q, _wire.OP_PUT_NOWAIT, b"z").error, QueueFull)
    _settle(q, 1, 0)
    assert putter.value == OK
    assert list(q.items) == [b"c"]


def test_a_closed_queue_ends_batch_gets_once_drained() -> None:
    q = _filled(0, b"a")
    waiting = _lend(q, 2, owner="p2")
    assert _batch(waiting) == [b"a"]
    parked = _lend(q, 2)
    _do(q, _wire.OP_CLOSE)
    assert isinstance(parked.error, EndOfStream)
    q.owner_gone("p2")  # a lent item coming back after the close is still served
    assert _batch(_lend(q, 2)) == [b"a"]
    assert isinstance(_lend(q, 2).error, EndOfStream)


# --- lock and semaphores -------------------------------------------------------------------


def test_lock_grants_one_owner_and_wakes_the_next_on_release() -> None:
    lock = _one("lock")
    assert _do(lock, _wire.OP_ACQUIRE, owner="a").value == TRUE
    waiting = _do(lock, _wire.OP_ACQUIRE, owner="b")
    assert waiting.parked
    assert _do(lock, _wire.OP_TRY_ACQUIRE, owner="c").value == FALSE
    assert lock.stats() == {"locked": True, "owner_pid": None, "waiters": 1}
    assert _do(lock, _wire.OP_RELEASE, owner="a").value == OK
    assert waiting.value == TRUE
    assert lock.owners["b"] == 1
    assert lock.owners["a"] == 0


def test_releasing_an_unlocked_lock_fails() -> None:
    assert isinstance(_do(_one("lock"), _wire.OP_RELEASE).error, RuntimeError)


def test_a_lock_released_by_another_process_is_taken_from_its_holder() -> None:
    lock = _one("lock")
    _do(lock, _wire.OP_ACQUIRE, owner="a")
    assert _do(lock, _wire.OP_RELEASE, owner="b").value == OK
    assert lock.value == 1
    assert lock.owners["a"] == 0


def test_a_dead_holder_frees_the_lock_and_the_next_acquirer_is_told() -> None:
    lock = _one("lock")
    _do(lock, _wire.OP_ACQUIRE, owner="dead")
    waiting = _do(lock, _wire.OP_ACQUIRE, owner="b")
    lock.owner_gone("dead")
    assert isinstance(waiting.error, LockOwnerDiedError)
    assert lock.value == 1  # free, and told once only
    assert _do(lock, _wire.OP_ACQUIRE, owner="c").value == TRUE


def test_owner_gone_with_nothing_held_changes_nothing() -> None:
    lock = _one("lock")
    _do(lock, _wire.OP_ACQUIRE, owner="a")
    lock.owner_gone("b")
    assert lock.value == 0
    assert not lock.owner_died


def test_a_cancelled_acquire_is_not_granted() -> None:
    lock = _one("lock")
    _do(lock, _wire.OP_ACQUIRE, owner="a")
    waiting = _do(lock, _wire.OP_ACQUIRE, owner="b")
    lock.cancel(waiting)
    _do(lock, _wire.OP_RELEASE, owner="a")
    assert waiting.parked
    assert lock.value == 1


def test_semaphore_counts_and_a_dead_holder_is_no_error() -> None:
    sem = _one("semaphore", value=2, bounded=False)
    assert _do(sem, _wire.OP_ACQUIRE, owner="a").value == TRUE
    assert _do(sem, _wire.OP_ACQUIRE, owner="b").value == TRUE
    waiting = _do(sem, _wire.OP_ACQUIRE, owner="c")
    assert waiting.parked
    sem.owner_gone("a")
    assert waiting.value == TRUE
    assert sem.stats() == {"value": 0, "waiters": 0}
    _do(sem, _wire.OP_RELEASE, owner="b")
    _do(sem, _wire.OP_RELEASE, owner="c")
    assert _do(sem, _wire.OP_RELEASE, owner="c").value == OK  # unbounded: may go above 2
    assert sem.value == 3


def test_bounded_semaphore_refuses_a_release_too_many() -> None:
    sem = _one("semaphore", value=1, bounded=True)
    assert isinstance(_do(sem, _wire.OP_RELEASE).error, ValueError)
    _do(sem, _wire.OP_ACQUIRE)
    assert _do(sem, _wire.OP_RELEASE).value == OK


# --- event, condition, barrier -------------------------------------------------------------


def test_event_wakes_every_waiter_and_stays_set_until_cleared() -> None:
    event = _one("event")
    first, second = _do(event, _wire.OP_WAIT), _do(event, _wire.OP_WAIT)
    cancelled = _do(event, _wire.OP_WAIT)
    event.cancel(cancelled)
    assert event.stats() == {"is_set": False, "waiters": 2}
    _do(event, _wire.OP_SET)
    assert first.value == second.value == TRUE
    assert cancelled.parked
    assert _do(event, _wire.OP_WAIT).value == TRUE
    _do(event, _wire.OP_CLEAR)
    assert _do(event, _wire.OP_WAIT).parked


def test_condition_wait_releases_the_lock_and_takes_it_back_when_notified() -> None:
    lock = _one("lock")
    (cond,) = _objects.create("condition", {"lock": 1}, {1: lock})
    assert isinstance(_do(cond, _wire.OP_COND_WAIT, owner="a").error, RuntimeError)
    _do(lock, _wire.OP_ACQUIRE, owner="a")
    waiting = _do(cond, _wire.OP_COND_WAIT, owner="a")
    assert waiting.parked
    assert lock.value == 1  # released while waiting
    _do(lock, _wire.OP_ACQUIRE, owner="b")
    assert _do(cond, _wire.OP_NOTIFY, (1).to_bytes(8, "little"), owner="b").value == OK
    assert waiting.parked  # notified, but the lock is b's
    _do(lock, _wire.OP_RELEASE, owner="b")
    assert waiting.value == TRUE
    assert lock.owners["a"] == 1


def test_a_cancelled_condition_waiter_is_forgotten_even_once_notified() -> None:
    lock = _one("lock")
    (cond,) = _objects.create("condition", {"lock": 1}, {1: lock})
    _do(lock, _wire.OP_ACQUIRE, owner="a")
    waiting = _do(cond, _wire.OP_COND_WAIT, owner="a")
    _do(lock, _wire.OP_ACQUIRE, owner="b")
    _do(cond, _wire.OP_NOTIFY, owner="b")  # now waiting for the lock
    assert len(lock.waiters) == 1
    cond.cancel(waiting)
    assert not lock.waiters
    assert not cond.waiters


def test_barrier_releases_its_parties_with_their_index() -> None:
    barrier = _one("barrier", parties=2)
    first = _do(barrier, _wire.OP_BARRIER_WAIT)
    assert first.parked
    second = _do(barrier, _wire.OP_BARRIER_WAIT)
    assert int.from_bytes(first.value, "little") == 0
    assert int.from_bytes(second.value, "little") == 1


def test_an_aborted_barrier_is_broken_until_reset() -> None:
    barrier = _one("barrier", parties=3)
    waiting = _do(barrier, _wire.OP_BARRIER_WAIT)
    cancelled = _do(barrier, _wire.OP_BARRIER_WAIT)
    barrier.cancel(cancelled)
    _do(barrier, _wire.OP_ABORT)
    assert isinstance(waiting.error, BrokenBarrierError)
    assert cancelled.parked
    assert isinstance(_do(barrier, _wire.OP_BARRIER_WAIT).error, BrokenBarrierError)
    stats = pickle.loads(_do(barrier, _wire.OP_STATS).value)
    assert stats == {"parties": 3, "n_waiting": 0, "broken": True}
    _do(barrier, _wire.OP_RESET)
    assert _do(barrier, _wire.OP_BARRIER_WAIT).parked


# --- pipe ----------------------------------------------------------------------------------


def test_a_pipe_end_receives_what_the_other_sends() -> None:
    a, b = _objects.create("pipe", {"duplex": True}, {})
    getter = _do(a, _wire.OP_GET)
    _do(b, _wire.OP_PUT, b"1")
    _do(b, _wire.OP_PUT, b"2")
    assert getter.value == b"1"
    assert _do(a, _wire.OP_GET_NOWAIT).value == b"2"
    assert isinstance(_do(a, _wire.OP_GET_NOWAIT).error, WouldBlock)
    _do(a, _wire.OP_PUT, b"back")
    assert _do(b, _wire.OP_GET).value == b"back"


def test_a_one_way_pipe_refuses_the_other_direction() -> None:
    a, b = _objects.create("pipe", {"duplex": False}, {})
    assert isinstance(_do(a, _wire.OP_PUT, b"x").error, OSError)
    assert isinstance(_do(b, _wire.OP_GET).error, OSError)


def test_closing_an_end_gives_the_other_what_is_left_then_eof() -> None:
    a, b = _objects.create("pipe", {"duplex": True}, {})
    _do(b, _wire.OP_PUT, b"left")
    assert b.release() == []  # a is open: b stays known until a goes too
    assert isinstance(_do(a, _wire.OP_PUT, b"x").error, BrokenPipeError)
    assert _do(a, _wire.OP_GET).value == b"left"
    assert isinstance(_do(a, _wire.OP_GET).error, EndOfStream)
    assert a.stats() == {"pending": 0, "waiting_receivers": 0, "peer_closed": True}
    assert a.release() == [a, b]


def test_a_waiting_receiver_gets_eof_when_the_other_end_closes() -> None:
    a, b = _objects.create("pipe", {"duplex": True}, {})
    getter = _do(a, _wire.OP_GET)
    b.release()
    assert isinstance(getter.error, EndOfStream)


# --- shared memory and containers ----------------------------------------------------------


def test_shared_memory_closes_its_descriptor_on_release() -> None:
    shm = _one("shm", size=10)
    fd = shm.fd
    assert os.fstat(fd).st_size == 10
    assert pickle.loads(_do(shm, _wire.OP_STATS).value) == {"size": 10}
    assert shm.release() == [shm]
    assert shm.fd is None
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def _method(state: _objects.State, method: str, *args: Any) -> Waiter:
    return _do(state, _wire.OP_METHOD, pickle.dumps((method, args, {})))


def test_a_dict_answers_its_methods_with_copies() -> None:
    d = _one("dict", initial={"a": 1})
    assert pickle.loads(_method(d, "__setitem__", "b", 2).value) is None
    assert pickle.loads(_method(d, "keys").value) == ["a", "b"]
    assert isinstance(_method(d, "__getitem__", "zz").error, KeyError)
    assert isinstance(_method(d, "__class__").error, AttributeError)  # not allowed
    assert pickle.loads(_do(d, _wire.OP_STATS).value) == {"kind": "dict"}


def test_a_list_and_a_namespace() -> None:
    items = _one("list", initial=None)
    _method(items, "append", 3)
    _method(items, "insert", 0, 1)
    assert pickle.loads(_method(items, "copy").value) == [1, 3]
    assert isinstance(_method(items, "index", 9).error, ValueError)
    ns = _one("namespace", initial={"x": 1})
    _method(ns, "__setattr__", "y", 2)
    assert pickle.loads(_method(ns, "__getattr__", "x").value) == 1
    assert pickle.loads(_method(ns, "copy").value) == {"x": 1, "y": 2}
    assert isinstance(_method(ns, "__getattr__", "zz").error, AttributeError)


# --- the hub's handles ---------------------------------------------------------------------


@pytest.fixture
def hub() -> Any:
    hub = _hub.Hub()
    yield hub
    hub.close()


def _create(hub: _hub.Hub, kind: str, **params: Any) -> list[int]:
    return hub.create_from(pickle.dumps((kind, params)))


def test_an_object_goes_with_its_last_handle(hub: _hub.Hub) -> None:
    (oid,) = _create(hub, "queue", maxsize=0)
    hub.attach(oid)
    hub.detach(oid)
    assert oid in hub.objects
    hub.detach(oid)
    assert oid not in hub.objects
    with pytest.raises(ClosedResourceError):
        hub.get(oid)


def test_a_handle_in_transit_keeps_the_object(hub: _hub.Hub) -> None:
    (oid,) = _create(hub, "event")
    hub.transit(oid, 1)
    hub.detach(oid)  # the sender lets go before the receiver adopts
    assert oid in hub.objects
    hub.adopt(oid, 1)
    hub.detach(oid)
    assert oid not in hub.objects
    (oid,) = _create(hub, "event")
    hub.adopt(oid, 2)  # the receiver was faster than the sender's transit
    hub.transit(oid, 2)
    assert hub.objects[oid].handles == 2


def test_pipe_ends_are_forgotten_together(hub: _hub.Hub) -> None:
    a, b = _create(hub, "pipe", duplex=True)
    hub.detach(a)
    assert a in hub.objects and b in hub.objects  # b still reads a's state
    hub.detach(b)
    assert a not in hub.objects and b not in hub.objects


# --- the request lifecycle, on this process's hub ------------------------------------------


def _local(hub: _hub.Hub, oid: int, op: int, undo: _client.Undo | None = None) -> Any:
    return _client._LocalRequest(hub, oid, op, b"", undo)


def test_a_blocking_request_that_times_out_is_withdrawn(hub: _hub.Hub) -> None:
    (oid,) = _create(hub, "queue", maxsize=0)
    with pytest.raises(TimeoutError):
        _local(hub, oid, _wire.OP_GET, _client.Undo.put_back(oid)).run_sync(0.0)
    state = hub.objects[oid]
    assert not state.getters
    hub.get(oid).handle(_wire.OP_PUT, b"x", Waiter())
    assert list(state.items) == [b"x"]


def test_a_granted_request_abandoned_gives_it_back(hub: _hub.Hub) -> None:
    (oid,) = _create(hub, "queue", maxsize=0)
    state = hub.objects[oid]
    state.items.extend([b"first", b"second"])
    request = _local(hub, oid, _wire.OP_GET, _client.Undo.put_back(oid))
    request.start()
    assert request.answered()
    request.abandon()
    assert list(state.items) == [b"first", b"second"]
    (lock,) = _create(hub, "lock")
    request = _local(hub, lock, _wire.OP_ACQUIRE, _client.Undo.release(lock))
    request.start()
    assert hub.objects[lock].value == 0
    request.abandon()
    assert hub.objects[lock].value == 1


def test_a_cancelled_task_leaves_the_lock_as_it_was(hub: _hub.Hub) -> None:
    (lock,) = _create(hub, "lock")
    state = hub.objects[lock]
    holder = Waiter()
    state.handle(_wire.OP_ACQUIRE, b"", holder)

    async def main() -> None:
        endpoint = _client.Endpoint(hub.address, hub.key)
        # Parked, then cancelled: withdrawn.
        task = asyncio.ensure_future(
            endpoint.call(lock, _wire.OP_ACQUIRE, undo=_client.Undo.release(lock))
        )
        await asyncio.sleep(0)
        assert len(state.waiters) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not state.waiters
        # Parked, granted, and cancelled before it could run: given back.
        task = asyncio.ensure_future(
            endpoint.call(lock, _wire.OP_ACQUIRE, undo=_client.Undo.release(lock))
        )
        await asyncio.sleep(0)
        state.handle(_wire.OP_RELEASE, b"", holder)
        assert state.value == 0  # granted to the task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert state.value == 1
        assert not state.waiters

    local = _hub._local
    _hub._local = hub  # the endpoint reaches it directly, as in the hosting process
    try:
        asyncio.run(main())
    finally:
        _hub._local = local


class _FakeClient:
    """What a _RemoteRequest uses of its Client, recorded."""

    def __init__(self) -> None:
        self.rids = iter(range(1, 100))
        self.requests: dict[int, Any] = {}
        self.sent: list[_wire.HubCall] = []
        self.posts: list[tuple[int, int, bytes]] = []
        self.lost = False

    def send(self, msg: _wire.HubCall) -> None:
        self.sent.append(msg)

    def post(self, oid: int, op: int, arg: bytes = b"") -> None:
        self.posts.append((oid, op, arg))


def test_a_remote_grant_crossing_the_withdrawal_is_given_back() -> None:
    client: Any = _FakeClient()
    future: Any = _Slot()  # awaited by a task: the event loop reads the answers
    request = _client._RemoteRequest(client, 5, _wire.OP_GET, b"", _client.Undo.put_back(5), future)
    request.start()
    assert client.sent[-1] == _wire.HubCall(1, 5, _wire.OP_GET, b"")
    request.abandon()  # cancelled before any answer: withdrawn
    assert client.sent[-1] == _wire.HubCall(0, 0, _wire.OP_CANCEL, (1).to_bytes(8, "little"))
    # The hub granted the item before it read the cancel, then answers the cancel.
    _client.Client._on_reply(client, _wire.HubReply(1, _wire.STATUS_OK, b"item"))
    assert client.posts == [(5, _wire.OP_PUT_FRONT, b"item")]
    assert 1 in client.requests
    _client.Client._on_reply(client, _wire.HubReply(1, _wire.STATUS_CANCELLED))
    assert not client.requests
    assert not future.done()  # the task was told nothing: it was cancelled


def test_a_remote_answer_wakes_its_caller_once() -> None:
    client: Any = _FakeClient()
    future: Any = _Slot()
    request = _client._RemoteRequest(client, 5, _wire.OP_ACQUIRE, b"", None, future)
    request.start()
    _client.Client._on_reply(client, _wire.HubReply(1, _wire.STATUS_OK, TRUE))
    assert future.done()
    assert request.result() == TRUE
    _client.Client._on_reply(client, _wire.HubReply(1, _wire.STATUS_OK, TRUE))  # stray
    request = _client._RemoteRequest(client, 5, _wire.OP_ACQUIRE, b"", None, _Slot())
    request.start()
    error = pickle.dumps(LockOwnerDiedError("gone"))
    _client.Client._on_reply(client, _wire.HubReply(2, _wire.STATUS_ERROR, error))
    with pytest.raises(LockOwnerDiedError):
        request.result()


class _Slot:
    """A future's answer side."""

    def __init__(self) -> None:
        self.result: Any = None
        self.set = False

    def done(self) -> bool:
        return self.set

    def set_result(self, value: Any) -> None:
        assert not self.set
        self.set = True
        self.result = value


def test_a_blocking_call_from_another_thread_runs_in_the_loop(hub: _hub.Hub) -> None:
    (event,) = _create(hub, "event")
    (queue,) = _create(hub, "queue", maxsize=0)
    event_state, queue_state = hub.objects[event], hub.objects[queue]

    def in_thread() -> None:
        endpoint = _client.Endpoint(hub.address, hub.key)
        with pytest.raises(TimeoutError):
            endpoint.call_sync(event, _wire.OP_WAIT, b"", 0.01)
        with pytest.raises(TimeoutError):
            endpoint.call_sync(queue, _wire.OP_GET, b"", 0.01, _client.Undo.put_back(queue))
        endpoint.call_sync(queue, _wire.OP_PUT, b"x", None)
        assert endpoint.call_sync(queue, _wire.OP_GET, b"", None) == b"x"
        with pytest.raises(ClosedResourceError):
            endpoint.call_sync(12345, _wire.OP_GET, b"", None)

    async def main() -> None:
        hub.ensure_attached()  # the hub is this loop's: the thread's calls run here
        await asyncio.to_thread(in_thread)
        await asyncio.sleep(0)  # the last withdrawal, sent from the thread, runs now
        assert not event_state.waiters
        assert not queue_state.getters
        assert not queue_state.items

    local = _hub._local
    _hub._local = hub
    try:
        asyncio.run(main())
    finally:
        _hub._local = local
        hub.backend = None  # that loop is gone


class _FakeConnection(_FakeClient):
    """A _FakeClient whose writes go through ``pending`` in order, as Client's do."""

    def __init__(self) -> None:
        super().__init__()
        self.send_lock = threading.Lock()
        self.pending = bytearray()
        self.reader = _wire.FrameReader(decoder=_wire.hub_decoder)

    def enqueue(self, msg: _wire.HubCall) -> bool:
        _wire.encode_into(msg, self.pending)
        return False

    def flush(self) -> None:
        data, self.pending = self.pending, bytearray()
        self.sent.extend(self.reader.feed(bytes(data)))

    def send(self, msg: _wire.HubCall) -> None:
        self.enqueue(msg)
        self.flush()


def _settles(client: _FakeConnection) -> list[tuple[int, int]]:
    client.flush()
    return [_wire.LEND.unpack(m.arg) for m in client.sent if m.op == _wire.OP_SETTLE]


def test_a_prefetch_settles_what_it_handed_out_and_gives_back_the_rest() -> None:
    client: Any = _FakeConnection()
    prefetch = _client.Prefetch(client, 5)
    prefetch.users = 1
    assert prefetch.take() is None  # empty: the caller fetches
    future: Any = _Slot()
    _client._Fetch(prefetch, future).start()
    assert client.sent[-1] == _wire.HubCall(1, 5, _wire.OP_GET_MANY, _wire.LEND.pack(1, 0))
    batch = _wire.pack_items([b"a", b"b", b"c"])
    _client.Client._on_reply(client, _wire.HubReply(1, _wire.STATUS_OK, batch))
    assert future.done()
    assert [prefetch.take(), prefetch.take()] == [b"a", b"b"]
    assert _settles(client) == []  # mid-batch: nothing written per get
    prefetch.give_back()  # a get gave up, or the proxy went
    assert _settles(client) == [(2, 1)]  # "a", "b" handed out; "c" back first in line
    assert prefetch.take() is None

    # Emptying the buffer settles at once (a consumer that stops holds nothing counted).
    _client._Fetch(prefetch, _Slot()).start()
    _client.Client._on_reply(client, _wire.HubReply(2, _wire.STATUS_OK, _wire.pack_items([b"d"])))
    assert prefetch.take() == b"d"
    assert _settles(client) == [(2, 1), (1, 0)]


def test_a_batch_granted_across_a_cancel_goes_back() -> None:
    client: Any = _FakeConnection()
    prefetch = _client.Prefetch(client, 5)
    prefetch.users = 1
    future: Any = _Slot()
    request = _client._Fetch(prefetch, future)
    request.start()
    request.abandon()  # cancelled before any answer: withdrawn
    assert client.sent[-1] == _wire.HubCall(0, 0, _wire.OP_CANCEL, (1).to_bytes(8, "little"))
    batch = _wire.pack_items([b"a", b"b"])
    _client.Client._on_reply(client, _wire.HubReply(1, _wire.STATUS_OK, batch))
    assert _settles(client) == [(0, 2)]
    _client.Client._on_reply(client, _wire.HubReply(1, _wire.STATUS_CANCELLED))
    assert not client.requests and not future.done()
    assert prefetch.take() is None


def test_prefetch_batches_follow_the_consumer_s_rate() -> None:
    client: Any = _FakeConnection()
    fast = _client.Prefetch(client, 5)
    fast.filled = (0.0, 1)  # one item handed out since the clock's origin: slow
    assert _wire.LEND.unpack(fast.ask())[0] == 1
    wants = []
    for _ in range(12):
        # Its whole batch handed out in no time (an arrival in the future: never preempted).
        fast.filled = (time.monotonic() + 60, fast.want)
        wants.append(_wire.LEND.unpack(fast.ask())[0])
    assert wants[:4] == [2, 4, 8, 16]  # doubling: the rate allows far more
    assert max(wants) == 256  # capped
    slow = _client.Prefetch(client, 6)
    slow.want = 64
    slow.filled = (time.monotonic() - 0.64, 64)  # 10 ms per item
    assert _wire.LEND.unpack(slow.ask())[0] == 1
