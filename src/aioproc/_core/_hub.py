"""The IPC hub: where Queues, Pipes, Locks, Events... live, and how processes reach them.

One process hosts every IPC object: the first process that creates one (normally the
program's main process; workers are told its address when they start). The hosting
process serves other processes from its own event loop::

    any process                                       hosting process
    ───────────                                       ───────────────
    proxy ─ Client ── HubCall(rid, oid, op, arg) ──▶  Hub ─▶ state machine (_objects)
            (one unix    ◀── HubReply(rid, status) ──      │   parks or completes waiters
             socket)                                       ▼
                                                     local proxies call the state directly

- A local operation (in the hosting process) touches the state machine directly: an
  uncontended lock or a queue get costs no I/O at all.
- A remote operation is one request and one reply on the process's connection, read by
  the event loop of that process (``add_reader``) or, for the blocking ``.sync`` views, by
  the calling thread. Posts (rid 0) ask for no reply: puts on an unbounded queue stream
  without waiting.
- Cancellation keeps objects consistent: a cancelled waiter is withdrawn (``CANCEL``),
  and a value granted just before the withdrawal arrived (an item, a lock) is handed back
  (``OP_PUT_FRONT``, ``OP_RELEASE``). The hub answers every ``CANCEL`` after any grant for
  the same request, so the client always knows which of the two happened.
- When a process's connection closes (it exited or died), its handles are dropped, its
  waiters withdrawn, and locks it held are freed and marked "owner died".
- A connection that breaks the protocol (a frame that does not decode, a length over
  ``MAX_FRAME``, a message only a hub sends) is dropped as if its process had died: the
  hub logs why on the ``aioproc`` logger and tells the process, whose calls then raise
  ``ClosedResourceError`` with the reason. Every other connection is served on.

Security: the socket is bound in Linux's abstract namespace under a random name: there is
no file, so nothing is left behind however the process ends (the kernel drops the name
with the last descriptor of the socket). An abstract socket has no file mode, so the hub
asks the kernel who connected (``SO_PEERCRED``) and drops a peer of another user before
saying anything; then a client proves it knows the hub's 32-byte key (HMAC-SHA256 of a
random challenge) before any pickle is exchanged. The handshake is read without blocking
like any other traffic: a peer that connects and says nothing delays no one.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import pickle
import select
import socket
import struct
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

from .._exceptions import ClosedResourceError, SerializationError
from . import _fds, _objects, _wire

if TYPE_CHECKING:
    from ._loop import Backend, Future

__all__ = ("HOST", "Endpoint", "Hub", "endpoint", "local_hub", "set_default")

OP_CREATE, OP_ATTACH, OP_DETACH, OP_CANCEL, OP_TRANSIT, OP_ADOPT = 94, 91, 92, 93, 95, 96
OP_GETFD = 97  # the reply carries the object's file descriptor (SCM_RIGHTS)
STATUS_OK, STATUS_ERROR, STATUS_CANCELLED = 0, 1, 2
STATUS_DROPPED = 3  # rid 0: the hub is closing this connection; the value says why (utf-8)

_READ = 1 << 18
_CHALLENGE = 32
_ANSWER = 40  # HMAC-SHA256 of the challenge, then the client's pid (8 bytes)
# A peer that has not answered the challenge by then is dropped: a child answers at once,
# and a stranger that connects and stays silent must not keep a connection forever.
_HANDSHAKE_TIMEOUT = 30.0
_FLUSH_AT = 1 << 18  # pending posts written by the caller itself past this size
_RECV_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_CMSG_CLOEXEC", 0)

_log = logging.getLogger("aioproc")


class _Host:
    """The owner of what the hosting process itself holds."""

    pid = os.getpid()


HOST = _Host()


def _digest(key: bytes, challenge: bytes) -> bytes:
    import hmac  # here: a worker that uses no IPC object never loads OpenSSL's hashes

    return hmac.new(key, challenge, "sha256").digest()


def _error_bytes(exc: object) -> bytes:
    try:
        return pickle.dumps(exc, 5)
    except Exception:
        return pickle.dumps(RuntimeError(repr(exc)), 5)


# --- waiters -----------------------------------------------------------------------------


class _LocalWaiter:
    """A waiter for an operation of the hosting process itself."""

    __slots__ = ("error", "event", "future", "gone", "owner", "value")

    def __init__(self, future: Future | None = None, event: threading.Event | None = None):
        self.owner = HOST
        self.future = future
        self.event = event
        self.value: bytes | None = None
        self.error: BaseException | None = None
        self.gone = False

    def finished(self) -> bool:
        return self.value is not None or self.error is not None

    def resolve(self, value: bytes) -> bool:
        if self.gone or self.finished():
            return False
        future = self.future
        if future is not None and future.done():  # its task was cancelled
            return False
        self.value = value
        if future is not None:
            future.set_result(None)
        if self.event is not None:
            self.event.set()
        return True

    def fail(self, exc: BaseException) -> None:
        if self.gone or self.finished():
            return
        future = self.future
        if future is not None and future.done():
            return
        self.error = exc
        if future is not None:
            future.set_result(None)
        if self.event is not None:
            self.event.set()

    def result(self) -> bytes:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class _RemoteWaiter:
    """A waiter for a request that came over a connection."""

    __slots__ = ("conn", "oid", "owner", "rid")

    def __init__(self, conn: _Conn, rid: int, oid: int = 0) -> None:
        self.conn = conn
        self.owner = conn
        self.rid = rid
        self.oid = oid

    def resolve(self, value: bytes) -> bool:
        conn = self.conn
        if conn.closed or (self.rid and conn.waiting.pop(self.rid, None) is None):
            return False
        if self.rid:
            conn.reply(self.rid, STATUS_OK, value)
        return True

    def fail(self, exc: BaseException) -> None:
        conn = self.conn
        if conn.closed:
            return
        if self.rid:
            if conn.waiting.pop(self.rid, None) is not None:
                conn.reply(self.rid, STATUS_ERROR, _error_bytes(exc))
        else:
            # A post failed (a put on a closed queue): tell the process, rid 0, so that
            # its next post to the same object raises.
            conn.reply(0, STATUS_ERROR, _error_bytes((self.oid, exc)))


# --- the hosting side ---------------------------------------------------------------------


class _Conn:
    """The hub's end of one process's connection."""

    def __init__(self, hub: Hub, sock: socket.socket, challenge: bytes) -> None:
        self.hub = hub
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = 0
        self.deadline: Any = None  # timer that drops the peer if it does not answer in time
        # Until the peer has proved it knows the key: the challenge it was sent and its
        # answer so far (None once authenticated). Nothing else is read before that.
        self.challenge: bytes | None = challenge
        self.answer = b""
        self.reader = _wire.FrameReader(decoder=_wire.hub_decoder)
        self.outbuf = bytearray()
        # Replies that carry an fd: [offset of the frame in outbuf, frame length, fd].
        self.fd_frames: collections.deque[list[int]] = collections.deque()
        self.writing = False
        self.closed = False
        self.handles: collections.Counter[int] = collections.Counter()
        self.waiting: dict[int, tuple[int, _RemoteWaiter]] = {}  # rid -> (oid, waiter)

    def reply(self, rid: int, status: int, value: bytes) -> None:
        _wire.encode_into(_wire.HubReply(rid, status, value), self.outbuf)
        self.hub.dirty.add(self)

    def reply_fd(self, rid: int, fd: int) -> None:
        """Reply with a duplicate of ``fd`` attached to the reply's first byte."""
        start = len(self.outbuf)
        _wire.encode_into(_wire.HubReply(rid, STATUS_OK, b""), self.outbuf)
        self.fd_frames.append([start, len(self.outbuf) - start, os.dup(fd)])
        self.hub.dirty.add(self)


class Hub:
    """The objects of this process, served to every process that connects."""

    def __init__(self) -> None:
        # An abstract socket (the leading NUL): a name in the kernel, not a file, so a
        # process killed by a signal leaves nothing on disk. 128 random bits: no one can
        # guess it or take it first (bind fails rather than share a name). Who may talk
        # to it is checked at accept (same user) and by the key.
        self.address = "\0aioproc-" + os.urandom(16).hex()
        self.key = os.urandom(32)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.address)
        self.listener.listen(128)
        self.listener.setblocking(False)
        _fds.register_fds(self.listener.fileno())
        self.objects: dict[int, _objects.State] = {}
        self.oids = itertools.count(1)
        # A pickled proxy holds a handle while in transit (token -> oid), so that the
        # object outlives its sender's handle until the receiver adopts it.
        self.transits: dict[int, int] = {}
        self.adopted_early: set[int] = set()
        self.conns: dict[int, _Conn] = {}
        self.dirty: set[_Conn] = set()
        self.backend: Backend | None = None
        self.loop_thread: int | None = None
        self.pid = os.getpid()
        self._finalizer = weakref.finalize(self, _close_listener, self.listener)

    # --- objects --------------------------------------------------------------------------

    def create(self, state: _objects.State) -> int:
        oid = next(self.oids)
        self.objects[oid] = state
        return oid

    def attach(self, oid: int, conn: _Conn | None = None) -> None:
        state = self.objects.get(oid)
        if state is None:
            raise ClosedResourceError("the object no longer exists")
        state.handles += 1
        if conn is not None:
            conn.handles[oid] += 1

    def transit(self, oid: int, token: int) -> None:
        if token in self.adopted_early:  # the receiver was faster than our message
            self.adopted_early.discard(token)
            return
        state = self.objects.get(oid)
        if state is not None:
            state.handles += 1
            self.transits[token] = oid

    def adopt(self, oid: int, token: int, conn: _Conn | None = None) -> None:
        if self.transits.pop(token, None) is not None:
            if conn is not None:
                conn.handles[oid] += 1
            return
        self.adopted_early.add(token)
        self.attach(oid, conn)

    def detach(self, oid: int, conn: _Conn | None = None) -> None:
        state = self.objects.get(oid)
        if state is None:
            return
        if conn is not None:
            if conn.handles[oid] <= 0:
                return
            conn.handles[oid] -= 1
        state.handles -= 1
        if state.handles <= 0:
            if isinstance(state, _objects.PipeEndState):
                state.close()
                peer = state.peer
                if peer is not None and peer.closed:
                    self._forget_pipe(oid, state)
            else:
                del self.objects[oid]
                state.release()

    def _forget_pipe(self, oid: int, state: _objects.PipeEndState) -> None:
        for key, value in list(self.objects.items()):
            if value is state or value is state.peer:
                del self.objects[key]

    # --- the event loop -------------------------------------------------------------------

    def ensure_attached(self) -> None:
        """Serve connections from the event loop running in this thread, if any."""
        from ._loop import current_backend  # not at import: workers need no asyncio

        try:
            backend = current_backend()
        except RuntimeError:
            return
        if backend is self.backend:
            return
        old = self.backend
        if old is not None:
            with contextlib.suppress(Exception):
                old.remove_reader(self.listener.fileno())
                for conn in self.conns.values():
                    old.remove_reader(conn.fd)
        self.backend = backend
        self.loop_thread = threading.get_ident()
        backend.add_reader(self.listener.fileno(), self._accept)
        for conn in self.conns.values():
            backend.add_reader(conn.fd, functools_partial(self._on_readable, conn))

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            uid = _peer_uid(sock)
            if uid != os.geteuid():
                # Anyone on this machine (in this network namespace) can reach an abstract
                # socket: another user is dropped before being told anything.
                _log.warning("aioproc hub: refused a connection from another user (%s)", uid)
                sock.close()
                continue
            # The challenge goes out now; the answer is read by _on_readable when it comes,
            # so a silent or slow peer blocks neither this loop nor other connections.
            sock.setblocking(False)
            challenge = os.urandom(_CHALLENGE)
            try:
                sock.send(challenge)  # a fresh socket's buffer has room for 32 bytes
            except OSError:
                sock.close()
                continue
            conn = _Conn(self, sock, challenge)
            self.conns[conn.fd] = conn
            _fds.register_fds(conn.fd)
            if self.backend is not None and self.loop_thread == threading.get_ident():
                self.backend.add_reader(conn.fd, functools_partial(self._on_readable, conn))
                conn.deadline = self.backend.call_later(
                    _HANDSHAKE_TIMEOUT, functools_partial(self._handshake_overdue, conn)
                )

    def _handshake_overdue(self, conn: _Conn) -> None:
        conn.deadline = None
        if conn.challenge is not None and not conn.closed:
            _log.warning(
                "aioproc hub: dropped a connection that did not answer the challenge in %.0f s",
                _HANDSHAKE_TIMEOUT,
            )
            self._lost(conn)

    def _authenticate(self, conn: _Conn) -> None:
        """Read the peer's answer to the challenge: accept it, or close the connection."""
        challenge = conn.challenge
        assert challenge is not None
        try:
            # Never more than the answer: nothing the peer sends is read before it proved
            # it knows the key, and nothing is buffered for it beyond these 40 bytes.
            data = conn.sock.recv(_ANSWER - len(conn.answer))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost(conn)  # hung up during the handshake
            return
        conn.answer += data
        if len(conn.answer) < _ANSWER:
            return
        import hmac

        if not hmac.compare_digest(conn.answer[:32], _digest(self.key, challenge)):
            _log.warning("aioproc hub: refused a connection that does not know the key")
            self._lost(conn)
            return
        conn.challenge = None
        if conn.deadline is not None:
            conn.deadline.cancel()
            conn.deadline = None
        conn.pid = _peer_pid(conn.sock) or int.from_bytes(conn.answer[32:], "little")
        try:
            conn.sock.send(b"\x01")
        except OSError:
            self._lost(conn)

    def _on_readable(self, conn: _Conn) -> None:
        if conn.challenge is not None:
            self._authenticate(conn)
            return
        try:
            data = conn.sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost(conn)
            return
        objects = self.objects
        queue_state = _objects.QueueState
        hub_call = _wire.HubCall
        try:
            for msg in conn.reader.feed(data):
                if type(msg) is not hub_call:
                    raise SerializationError(f"a {type(msg).__name__} message sent to the hub")
                if msg.rid == 0 and msg.op == _objects.OP_PUT:
                    # Fast path for the bulk of queue traffic: a post to a queue with room
                    # and nobody waiting is an append.
                    state = objects.get(msg.oid)
                    if (
                        type(state) is queue_state
                        and not state.getters
                        and not state.closed
                        and not state.full()
                    ):
                        state.items.append(msg.arg)
                        continue
                self._dispatch(conn, msg)
        except Exception as exc:
            # Framing lost, or a message no hub accepts or can answer: that peer is broken
            # or hostile. It loses its connection; nothing escapes into the event loop (or
            # into a blocking call serving the hub), and other processes are served on.
            self._drop(conn, exc)
        self.flush()

    def _drop(self, conn: _Conn, exc: Exception) -> None:
        """Close a connection that broke the protocol, saying why on both ends."""
        reason = str(exc) if isinstance(exc, SerializationError) else repr(exc)
        _log.warning(
            "aioproc hub: dropped the connection of process %d: %s",
            conn.pid,
            reason,
            exc_info=not isinstance(exc, SerializationError),  # a hub bug: keep its traceback
        )
        if not conn.closed:
            # Best effort: a peer that does not read its replies misses only the reason.
            conn.reply(0, STATUS_DROPPED, reason.encode())
            self._send(conn)
        self._lost(conn)

    def _dispatch(self, conn: _Conn, msg: _wire.HubCall) -> None:
        op = msg.op
        rid = msg.rid
        if op == OP_CANCEL:
            if len(msg.arg) != 8:
                raise SerializationError(f"a cancel request of {len(msg.arg)} bytes, not 8")
            target = int.from_bytes(msg.arg, "little")
            entry = conn.waiting.pop(target, None)
            if entry is not None:
                state = self.objects.get(entry[0])
                if state is not None:
                    state.cancel(entry[1])
            conn.reply(target, STATUS_CANCELLED, b"")
            return
        waiter = _RemoteWaiter(conn, rid, msg.oid)
        try:
            if op == OP_CREATE:
                oids = self.create_from(msg.arg)
                conn.handles.update(oids)
                if rid:
                    conn.waiting[rid] = (0, waiter)
                    waiter.resolve(pickle.dumps(oids, 5))
                return
            if op == OP_ATTACH:
                self.attach(msg.oid, conn)
                return
            if op == OP_TRANSIT:
                self.transit(msg.oid, int.from_bytes(msg.arg, "little"))
                return
            if op == OP_ADOPT:
                self.adopt(msg.oid, int.from_bytes(msg.arg, "little"), conn)
                return
            if op == OP_DETACH:
                self.detach(msg.oid, conn)
                return
            state = self.objects.get(msg.oid)
            if state is None:
                raise ClosedResourceError("the object no longer exists")
            if op == OP_GETFD:
                fd = getattr(state, "fd", None)
                if fd is None:
                    raise ValueError(f"a {state.kind} has no file descriptor")
                conn.reply_fd(rid, fd)
                return
            if rid:
                conn.waiting[rid] = (msg.oid, waiter)
            state.handle(op, msg.arg, waiter)
        except Exception as exc:
            if rid:
                conn.waiting[rid] = (msg.oid, waiter)
            waiter.fail(exc)

    def create_from(self, spec: bytes) -> list[int]:
        """Create an object described by a pickled (kind, params); return its oid(s)."""
        kind, params = pickle.loads(spec)
        states = make_states(kind, params, self)
        oids = [self.create(state) for state in states]
        for oid in oids:
            self.objects[oid].handles += 1
        return oids

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for conn in dirty:
            self._send(conn)

    def _send(self, conn: _Conn) -> None:
        if conn.closed or conn.writing:
            return
        outbuf = conn.outbuf
        fd_frames = conn.fd_frames
        while outbuf:
            try:
                if fd_frames and fd_frames[0][0] == 0:
                    _, length, fd = fd_frames.popleft()
                    try:
                        n = socket.send_fds(conn.sock, [outbuf[:length]], [fd])
                    finally:
                        os.close(fd)
                else:
                    limit = fd_frames[0][0] if fd_frames else len(outbuf)
                    n = conn.sock.send(memoryview(outbuf)[:limit])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._lost(conn)
                return
            del outbuf[:n]
            for entry in fd_frames:
                entry[0] -= n
        if outbuf and self.backend is not None:
            conn.writing = True
            self.backend.add_writer(conn.fd, functools_partial(self._on_writable, conn))

    def _on_writable(self, conn: _Conn) -> None:
        conn.writing = False
        if self.backend is not None:
            self.backend.remove_writer(conn.fd)
        self._send(conn)

    def _lost(self, conn: _Conn) -> None:
        """A process went away: drop its handles and waiters, free what it held."""
        if conn.closed:
            return
        conn.closed = True
        if conn.deadline is not None:
            conn.deadline.cancel()
            conn.deadline = None
        self.conns.pop(conn.fd, None)
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.remove_reader(conn.fd)
                if conn.writing:
                    self.backend.remove_writer(conn.fd)
        _fds.unregister_fds(conn.fd)
        conn.sock.close()
        for _, _, fd in conn.fd_frames:
            os.close(fd)
        conn.fd_frames.clear()
        for oid, waiter in conn.waiting.values():
            state = self.objects.get(oid)
            if state is not None:
                state.cancel(waiter)
        conn.waiting.clear()
        for state in list(self.objects.values()):
            state.owner_gone(conn)
        for oid, count in list(conn.handles.items()):
            for _ in range(count):
                self.detach(oid, conn)
        self.flush()

    # --- blocking calls in the hosting process ---------------------------------------------

    def pump(self, waiter: _LocalWaiter, deadline: float | None) -> None:
        """Serve connections from this thread until ``waiter`` is done or time is up.

        Used by ``.sync`` calls in the hosting process: while one blocks, its event loop
        (if any) cannot run, so the call serves the hub itself.
        """
        import time

        while not waiter.finished():
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            poller = select.poll()  # not select(): no limit on fd numbers
            poller.register(self.listener.fileno(), select.POLLIN)
            for each in self.conns.values():
                poller.register(each.fd, select.POLLIN | (select.POLLOUT if each.outbuf else 0))
            events = poller.poll(None if timeout is None else timeout * 1000)
            for fd, mask in events:
                if fd == self.listener.fileno():
                    self._accept()
                    continue
                found = self.conns.get(fd)
                if found is None:
                    continue
                if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    self._on_readable(found)
                if mask & select.POLLOUT and not found.closed:
                    found.writing = False
                    self._send(found)
            if not events and timeout is not None and timeout <= 0:
                return

    def poll(self) -> None:
        """Serve whatever is pending now, without waiting (connections that ended go)."""
        self.pump(_LocalWaiter(), 0.0)

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._lost(conn)
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.remove_reader(self.listener.fileno())
        _fds.unregister_fds(self.listener.fileno())
        self._finalizer()


def functools_partial(fn: Any, *args: Any) -> Any:
    import functools

    return functools.partial(fn, *args)


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_cred(sock: socket.socket) -> tuple[int, int] | None:
    """The pid and (effective) uid of the process at the other end when it connected, as
    the kernel tells it, or None if it cannot."""
    try:
        pid, uid, _ = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except (OSError, AttributeError, struct.error):
        return None
    return int(pid), int(uid)


def _peer_pid(sock: socket.socket) -> int:
    """The pid of the process at the other end (0 if unknown): what lock owners and log
    lines name, rather than what the peer says of itself."""
    cred = _peer_cred(sock)
    return 0 if cred is None else cred[0]


def _peer_uid(sock: socket.socket) -> int | None:
    """The user of the process at the other end (None if unknown: refused as a stranger)."""
    cred = _peer_cred(sock)
    return None if cred is None else cred[1]


def _close_listener(listener: socket.socket) -> None:
    # The kernel drops the abstract name with the last descriptor of the socket: a forked
    # child closing its copy leaves the parent's hub alone.
    with contextlib.suppress(OSError):
        listener.close()


def make_states(kind: str, params: dict[str, Any], hub: Hub) -> list[_objects.State]:
    if kind == "queue":
        return [_objects.QueueState(params["maxsize"])]
    if kind == "lock":
        return [_objects.LockState(1)]
    if kind == "semaphore":
        return [_objects.LockState(params["value"], semaphore=True, bounded=params["bounded"])]
    if kind == "event":
        return [_objects.EventState()]
    if kind == "condition":
        lock = hub.objects.get(params["lock"])
        if not isinstance(lock, _objects.LockState):
            raise ClosedResourceError("the condition's lock no longer exists")
        return [_objects.ConditionState(lock)]
    if kind == "barrier":
        return [_objects.BarrierState(params["parties"])]
    if kind == "shm":
        return [_objects.SharedMemoryState(params["size"])]
    if kind in ("dict", "list", "namespace"):
        return [_objects.ContainerState(kind, params.get("initial"))]
    if kind == "pipe":
        duplex = params["duplex"]
        a = _objects.PipeEndState(readable=True, writable=duplex)
        b = _objects.PipeEndState(readable=duplex, writable=True)
        a.peer, b.peer = b, a
        return [a, b]
    raise ValueError(f"unknown object kind {kind!r}")


# --- the client side ----------------------------------------------------------------------


class _ClientWaiter:
    __slots__ = ("cancelling", "done", "future", "status", "undo", "value")

    def __init__(self, future: Future | None, undo: tuple[int, int, bool] | None) -> None:
        self.future = future
        self.undo = undo
        self.cancelling = False
        self.done = False
        self.status = STATUS_OK
        self.value = b""

    def result(self) -> bytes:
        if self.status == STATUS_ERROR:
            raise pickle.loads(self.value)
        if self.status == STATUS_CANCELLED:
            raise ClosedResourceError("the request was cancelled")
        return self.value


class Client:
    """This process's connection to a hub in another process."""

    def __init__(self, address: str, key: bytes) -> None:
        self.address = address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(10.0)
            sock.connect(address)
            challenge = b""
            while len(challenge) < _CHALLENGE:
                chunk = sock.recv(_CHALLENGE - len(challenge))
                if not chunk:
                    raise ConnectionError("the hub closed the connection")
                challenge += chunk
            sock.sendall(_digest(key, challenge) + os.getpid().to_bytes(8, "little"))
            if sock.recv(1) != b"\x01":
                raise ConnectionError("the hub refused the connection")
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.fd = sock.fileno()
        _fds.register_fds(self.fd)
        self.reader = _wire.FrameReader(decoder=_wire.hub_decoder)
        self.rids = itertools.count(1)
        self.waiters: dict[int, _ClientWaiter] = {}
        self.post_errors: dict[int, BaseException] = {}  # oid -> why a post to it failed
        self.backend: Backend | None = None
        self.lock = threading.RLock()  # one reader at a time
        self.send_lock = threading.Lock()
        self.io_lock = threading.Lock()
        self.pending = bytearray()
        self.idle = True
        self.wake = threading.Event()
        self.flusher: threading.Thread | None = None
        self.fd_queue: collections.deque[int] = collections.deque()  # fds received, in order
        self.lost = False
        self.drop_reason: str | None = None  # why the hub dropped us, if it said so

    # Writes. Posts (puts on an unbounded queue, set(), handle bookkeeping) are appended
    # to ``pending`` and written by a flusher thread, so a producer putting many small
    # items pays one syscall per batch, not per item. A request that wants an answer
    # writes ``pending`` and itself at once, in order. ``send_lock`` guards ``pending``
    # (held for an append); ``io_lock`` orders writes on the socket (held for a write).

    def _send(self, msg: _wire.HubCall) -> None:
        with self.io_lock:
            with self.send_lock:
                _wire.encode_into(msg, self.pending)
                data, self.pending = self.pending, bytearray()
            self._write(data)

    def _write(self, data: bytes | bytearray) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.lost = True
            if self.backend is None and self.lock.acquire(blocking=False):
                # The hub closed the connection: its last words (why) may be waiting to be
                # read. Not with an event loop, whose thread reads (this may be another).
                try:
                    self._read_available()
                except Exception:
                    pass
                finally:
                    self.lock.release()
            raise self._lost_error(f": {exc}") from exc

    def _lost_error(self, detail: str = "") -> ClosedResourceError:
        """What calls raise once the connection is gone: the hub's reason, if it gave one."""
        if self.drop_reason is not None:
            return ClosedResourceError(
                f"the aioproc hub dropped this process's connection: {self.drop_reason}"
            )
        return ClosedResourceError(f"lost the connection to the aioproc hub{detail}")

    def post(self, oid: int, op: int, arg: bytes = b"") -> None:
        """Send an operation that needs no answer (a failure is raised by the next post)."""
        if self.post_errors or self.lost:
            self._raise_post_error(oid)
        with self.send_lock:
            _wire.encode_into(_wire.HubCall(0, oid, op, arg), self.pending)
            wake = self.idle
            self.idle = False
            large = len(self.pending) > _FLUSH_AT
        if large:
            self.flush()
        elif wake:
            if self.flusher is None:
                self.flusher = threading.Thread(
                    target=self._flush_loop, name="aioproc-hub-flusher", daemon=True
                )
                self.flusher.start()
            self.wake.set()

    def _raise_post_error(self, oid: int) -> None:
        if self.lost:
            raise self._lost_error()
        error = self.post_errors.pop(oid, None)
        if error is not None:
            raise error

    def flush(self) -> None:
        """Write every pending post now."""
        with self.io_lock:
            with self.send_lock:
                data, self.pending = self.pending, bytearray()
            if data:
                self._write(data)

    def _flush_loop(self) -> None:
        while not self.lost:
            with self.io_lock:
                with self.send_lock:
                    data = self.pending
                    if data:
                        self.pending = bytearray()
                    else:
                        self.idle = True
                        self.wake.clear()
                if data:
                    try:
                        self._write(data)
                    except ClosedResourceError:
                        return
                    self._read_errors()
                    continue
            self.wake.wait()

    def _read_errors(self) -> None:
        """Take in what the hub said about our posts (a put to a closed queue), so the next
        post to that object raises. Only without an event loop, whose thread reads
        otherwise, and only if no blocking call is reading right now."""
        if self.backend is None and self.lock.acquire(blocking=False):
            try:
                self._read_available()
            finally:
                self.lock.release()

    def _read_available(self) -> None:
        while True:
            try:
                data, fds = _recv_with_fds(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if fds:
                self.fd_queue.extend(fds)
            if not data:
                self._lose()
                return
            for msg in self.reader.feed(data):
                if isinstance(msg, _wire.HubReply):
                    self._on_reply(msg)

    def _lose(self) -> None:
        self.lost = True
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.remove_reader(self.fd)
        error = _error_bytes(self._lost_error())
        for rid, waiter in list(self.waiters.items()):
            del self.waiters[rid]
            self._finish(waiter, STATUS_ERROR, error)

    def _on_reply(self, msg: _wire.HubReply) -> None:
        if msg.rid == 0 and msg.status == STATUS_DROPPED:
            self.drop_reason = msg.value.decode(errors="replace")
            return
        if msg.rid == 0:
            # A post failed; the next post to that object raises it.
            with contextlib.suppress(Exception):
                oid, error = pickle.loads(msg.value)
                self.post_errors[oid] = error
            return
        waiter = self.waiters.get(msg.rid)
        if waiter is None:
            return
        if waiter.cancelling:
            if msg.status == STATUS_CANCELLED:
                del self.waiters[msg.rid]
            elif msg.status == STATUS_OK and waiter.undo is not None:
                # Granted just before our cancel arrived: give it back.
                oid, op, with_value = waiter.undo
                self.post(oid, op, msg.value if with_value else b"")
            return
        del self.waiters[msg.rid]
        self._finish(waiter, msg.status, msg.value)

    def _finish(self, waiter: _ClientWaiter, status: int, value: bytes) -> None:
        waiter.done = True
        waiter.status = status
        waiter.value = value
        future = waiter.future
        if future is not None and not future.done():
            future.set_result(None)

    def call_sync(
        self,
        oid: int,
        op: int,
        arg: bytes = b"",
        timeout: float | None = None,
        undo: tuple[int, int, bool] | None = None,
    ) -> bytes:
        import time

        rid = next(self.rids)
        waiter = _ClientWaiter(None, undo)
        self.waiters[rid] = waiter
        self._send(_wire.HubCall(rid, oid, op, arg))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while not waiter.done:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                readable, _, _ = select.select([self.sock], [], [], remaining)
                if readable:
                    self._read_available()
                    continue
                if self.lost:
                    break
                # Timed out: withdraw, and wait for the hub to say what became of it.
                waiter.cancelling = True
                self._send(_wire.HubCall(0, 0, OP_CANCEL, rid.to_bytes(8, "little")))
                while rid in self.waiters:
                    select.select([self.sock], [], [])
                    self._read_available()
                raise TimeoutError(f"timed out after {timeout} s")
        return waiter.result()

    def _attach(self) -> Backend:
        from ._loop import current_backend

        backend = current_backend()
        if backend is not self.backend:
            if self.backend is not None:
                with contextlib.suppress(Exception):
                    self.backend.remove_reader(self.fd)
            self.backend = backend
            backend.add_reader(self.fd, self._read_available)
        return backend

    async def call(
        self, oid: int, op: int, arg: bytes = b"", undo: tuple[int, int, bool] | None = None
    ) -> bytes:
        backend = self._attach()
        rid = next(self.rids)
        waiter = _ClientWaiter(backend.create_future(), undo)
        self.waiters[rid] = waiter
        self._send(_wire.HubCall(rid, oid, op, arg))
        try:
            await waiter.future  # type: ignore[misc]
        except BaseException:
            if waiter.done:
                if waiter.status == STATUS_OK and undo is not None:
                    oid_, op_, with_value = undo
                    self.post(oid_, op_, waiter.value if with_value else b"")
            elif not self.lost:
                waiter.cancelling = True
                self._send(_wire.HubCall(0, 0, OP_CANCEL, rid.to_bytes(8, "little")))
            raise
        return waiter.result()


# --- which hub, from here -----------------------------------------------------------------


class Endpoint:
    """How a proxy reaches its object: through the local hub or a client connection."""

    __slots__ = ("address", "client", "hub", "key")

    def __init__(self, address: str, key: bytes) -> None:
        self.address = address
        self.key = key
        local = _local
        if local is not None and local.address == address and local.pid == os.getpid():
            self.hub: Hub | None = local
            self.client: Client | None = None
        else:
            self.hub = None
            client = _clients.get(address)
            if client is None or client.lost:
                client = _clients[address] = Client(address, key)
            self.client = client

    # -- operations --

    async def call(
        self, oid: int, op: int, arg: bytes = b"", undo: tuple[int, int, bool] | None = None
    ) -> bytes:
        hub = self.hub
        if hub is None:
            assert self.client is not None
            return await self.client.call(oid, op, arg, undo)
        hub.ensure_attached()
        state = hub.objects.get(oid)
        if state is None:
            raise ClosedResourceError("the object no longer exists")
        backend = hub.backend
        assert backend is not None
        waiter = _LocalWaiter(future=None)
        state.handle(op, arg, waiter)
        # What this did for other processes (a lock released to a remote waiter by a
        # condition wait) must leave now, not once we are woken: they may be who wakes us.
        hub.flush()
        if not waiter.finished():
            waiter.future = future = backend.create_future()
            try:
                await future
            except BaseException:
                if waiter.finished():
                    if waiter.error is None and undo is not None:
                        self._undo_local(undo, waiter.value or b"")
                else:
                    waiter.gone = True
                    state.cancel(waiter)
                raise
            finally:
                hub.flush()
        hub.flush()
        return waiter.result()

    def _undo_local(self, undo: tuple[int, int, bool], value: bytes) -> None:
        assert self.hub is not None
        oid, op, with_value = undo
        state = self.hub.objects.get(oid)
        if state is not None:
            state.handle(op, value if with_value else b"", _LocalWaiter())

    def call_sync(
        self,
        oid: int,
        op: int,
        arg: bytes = b"",
        timeout: float | None = None,
        undo: tuple[int, int, bool] | None = None,
    ) -> bytes:
        hub = self.hub
        if hub is None:
            assert self.client is not None
            return self.client.call_sync(oid, op, arg, timeout, undo)
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        if hub.loop_thread not in (None, threading.get_ident()) and hub.backend is not None:
            return self._call_from_thread(oid, op, arg, deadline, undo)
        # Apply what other processes already sent first: a task whose result we just
        # saw has written its puts before its result, and a close() must come after them.
        hub.poll()
        state = hub.objects.get(oid)
        if state is None:
            raise ClosedResourceError("the object no longer exists")
        waiter = _LocalWaiter()
        state.handle(op, arg, waiter)
        hub.flush()
        if not waiter.finished():
            hub.pump(waiter, deadline)
            if not waiter.finished():
                waiter.gone = True
                state.cancel(waiter)
                raise TimeoutError(f"timed out after {timeout} s")
        hub.flush()
        return waiter.result()

    def _call_from_thread(
        self,
        oid: int,
        op: int,
        arg: bytes,
        deadline: float | None,
        undo: tuple[int, int, bool] | None,
    ) -> bytes:
        # The hub belongs to an event loop running in another thread: run the operation
        # there and block this thread on its outcome.
        import time

        hub = self.hub
        assert hub is not None
        assert hub.backend is not None
        event = threading.Event()
        waiter = _LocalWaiter(event=event)
        lock = threading.Lock()

        def start() -> None:
            state = hub.objects.get(oid)
            if state is None:
                waiter.fail(ClosedResourceError("the object no longer exists"))
                return
            state.handle(op, arg, waiter)
            hub.flush()

        def withdraw() -> None:
            with lock:
                if waiter.finished():
                    if waiter.error is None and undo is not None:
                        self._undo_local(undo, waiter.value or b"")
                else:
                    waiter.gone = True
                    state = hub.objects.get(oid)
                    if state is not None:
                        state.cancel(waiter)
            hub.flush()

        _threadsafe(hub.backend, start)
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not event.wait(timeout):
            _threadsafe(hub.backend, withdraw)
            raise TimeoutError(f"timed out after {timeout} s")
        return waiter.result()

    def post(self, oid: int, op: int, arg: bytes = b"") -> None:
        hub = self.hub
        if hub is None:
            assert self.client is not None
            self.client.post(oid, op, arg)
            return
        if op == OP_ATTACH:
            hub.attach(oid)
        elif op == OP_DETACH:
            hub.detach(oid)
        elif op == OP_TRANSIT:
            hub.transit(oid, int.from_bytes(arg, "little"))
        elif op == OP_ADOPT:
            hub.adopt(oid, int.from_bytes(arg, "little"))
        else:
            state = hub.objects.get(oid)
            if state is None:
                raise ClosedResourceError("the object no longer exists")
            waiter = _LocalWaiter()
            state.handle(op, arg, waiter)
            if waiter.error is not None:
                raise waiter.error
        hub.flush()

    def get_fd(self, oid: int) -> int:
        """A file descriptor of this process for object ``oid`` (shared memory)."""
        hub = self.hub
        if hub is not None:
            state = hub.objects.get(oid)
            fd = getattr(state, "fd", None)
            if fd is None:
                raise ClosedResourceError("the object no longer exists")
            return os.dup(fd)
        client = self.client
        assert client is not None
        with client.lock:
            client.call_sync(oid, OP_GETFD)
            return client.fd_queue.popleft()

    def create(self, kind: str, params: dict[str, Any]) -> list[int]:
        """Create an object on this endpoint's hub; the caller holds one handle on each."""
        hub = self.hub
        spec = pickle.dumps((kind, params), 5)
        if hub is not None:
            hub.ensure_attached()
            return hub.create_from(spec)
        assert self.client is not None
        oids: list[int] = pickle.loads(self.client.call_sync(0, OP_CREATE, spec))
        return oids


_FD_SPACE = socket.CMSG_SPACE(8 * 4)


def _recv_with_fds(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Non-blocking read that keeps any descriptors sent along (socket.recv_fds of
    Python 3.11 ignores its flags, so it would block)."""
    data, ancdata, _, _ = sock.recvmsg(_READ, _FD_SPACE, _RECV_FLAGS)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(
                int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True)
                for i in range(0, usable, 4)
            )
    return data, fds


def _threadsafe(backend: Backend, fn: Any) -> None:
    loop = getattr(backend, "loop", None)
    if loop is not None:
        loop.call_soon_threadsafe(fn)
    else:
        backend.call_soon(fn)  # trio's run_sync_soon is thread-safe


_local: Hub | None = None
_default: tuple[str, bytes] | None = None
in_worker = False  # set in pool workers and Process children
_clients: dict[str, Client] = {}
_lock = threading.Lock()


def local_hub() -> Hub:
    """This process's hub, created on first use."""
    global _local
    with _lock:
        if _local is None or _local.pid != os.getpid():
            _local = Hub()
        return _local


def set_default(address: str, key: bytes) -> None:
    """Objects created in this process live at ``address`` (a worker learns its parent's)."""
    global _default
    _default = (address, key)


def default_address() -> tuple[str, bytes]:
    """Where objects created here live: the parent's hub, or this process's own."""
    if _default is not None:
        return _default
    hub = local_hub()
    return hub.address, hub.key


def known_address() -> tuple[str, bytes] | None:
    """The hub address this process would hand on, without creating a hub."""
    if _default is not None:
        return _default
    if in_worker:
        return None  # a worker's own hub would not be served while it waits for tasks
    local = _local
    if local is not None and local.pid == os.getpid():
        local.ensure_attached()  # children will connect: serve them from this loop
        return local.address, local.key
    return None


def endpoint(address: str, key: bytes) -> Endpoint:
    return Endpoint(address, key)


def flush_clients() -> None:
    """Write what this process posted and has not sent yet (before it exits)."""
    for client in list(_clients.values()):
        with contextlib.suppress(Exception):
            client.flush()


def _after_fork_in_child() -> None:
    global _local, _default
    local = _local
    if local is not None:
        if _default is None:
            _default = (local.address, local.key)
        # The parent's shared-memory blocks stay the parent's: a forked worker that kept
        # their descriptors would pin the memory for its whole life, long after the
        # parent freed the block. Mappings are not affected, and a proxy asks the hub
        # for a descriptor of its own.
        for state in local.objects.values():
            if isinstance(state, _objects.SharedMemoryState) and state.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(state.fd)
                state.fd = None
    _local = None
    _clients.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
