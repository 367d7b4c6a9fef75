"""The IPC hub: where Queues, Pipes, Locks, Events... live, and how it serves other processes.

One process hosts every IPC object: the first process that creates one (normally the
program's main process; workers are told its address when they start). The hosting
process serves other processes from its own event loop::

    any process                                       hosting process
    ───────────                                       ───────────────
    proxy ─ Client ── HubCall(rid, oid, op, arg) ──▶  Hub ─▶ state machine (_objects)
     (_client)         ◀── HubReply(rid, status) ──    │   parks or completes waiters
            (one unix socket)                          ▼
                                                     local proxies call the state directly
                                                     (_client.Endpoint)

This module is the server: the listening socket, the handshake, each connection's buffers,
the handles each process holds, and the dispatch of operations to the state machines. How a
process calls it (over a connection, or directly in the hosting process), and how a
request is withdrawn or undone when its caller gives up, is ``_client``.

- A remote operation is one request and one reply on the process's connection, read here by
  the hosting process's event loop (``add_reader``) or, while a blocking ``.sync`` call of
  the hosting process waits, by that call (:meth:`Hub.pump`). Posts (rid 0) ask for no
  reply: puts on an unbounded queue stream without waiting.
- Cancellation keeps objects consistent: a withdrawn request (``OP_CANCEL``) is removed
  from its object, and the hub answers every ``OP_CANCEL`` after any grant for the same
  request, so the client always knows which of the two happened (and gives back a grant).
- When a process's connection closes (it exited or died), its handles are dropped, its
  waiters withdrawn, locks it held are freed and marked "owner died", and queue items lent
  to it (prefetched, see ``_objects.QueueState``) go back to the front of their queues; the
  same items go back when it lets go of its last handle on the queue.
- A connection that breaks the protocol (a frame that does not decode, a length over
  ``MAX_FRAME``, a message only a hub sends) is dropped as if its process had died: the
  hub logs why on the ``aioproc`` logger and tells the process, whose calls then raise
  ``ClosedResourceError`` with the reason. Every other connection is served on.

Invariants:
- An object's ``handles`` is the sum of every connection's ``handles[oid]``, the hosting
  process's own handles, and the handles in transit (``transits``); it goes when that sum
  reaches 0.
- A request (rid > 0) to an object's state is in its connection's ``waiting`` from its
  arrival until answered or withdrawn, and whoever answers or withdraws it takes it out
  first: each such request gets one answer (``OP_CANCEL`` then adds ``STATUS_CANCELLED``).

Security: the socket is bound in Linux's abstract namespace under a random name: there is
no file, so nothing is left behind however the process ends (the kernel drops the name
with the last descriptor of the socket). An abstract socket has no file mode, so the hub
asks the kernel who connected (``SO_PEERCRED``) and drops a peer of another user before
saying anything; then a client proves it knows the hub's 32-byte key (HMAC-SHA256 of a
random challenge) before any pickle is exchanged. The handshake is read without blocking
like any other traffic: a peer that connects and says nothing delays no one.

Tunables:
- ``_HANDSHAKE_TIMEOUT`` (30 s): how long a peer may take to answer the challenge. A child
  answers at once; a stranger must not hold a connection forever.
- ``_READ`` (256 KiB): one read of a connection; more frames per wake-up, more memory.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import os
import pickle
import select
import socket
import struct
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from .._exceptions import ClosedResourceError, SerializationError
from . import _fds, _objects, _role, _wire
from ._wire import (
    OP_ADOPT,
    OP_ATTACH,
    OP_CANCEL,
    OP_CREATE,
    OP_DETACH,
    OP_GETFD,
    OP_PUT,
    OP_TRANSIT,
    STATUS_CANCELLED,
    STATUS_DROPPED,
    STATUS_ERROR,
    STATUS_OK,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._loop import Backend

__all__ = ("CHALLENGE", "Hub", "digest", "hosted", "local_hub")

_READ = 1 << 18
CHALLENGE = 32  # bytes of the challenge a client answers
_ANSWER = 40  # HMAC-SHA256 of the challenge, then the client's pid (8 bytes)
_HANDSHAKE_TIMEOUT = 30.0

_log = logging.getLogger("aioproc")

# What removing a descriptor from an event loop raises when the loop has closed since
# (RuntimeError) or no longer knows the descriptor (OSError, ValueError).
LOOP_GONE = (OSError, RuntimeError, ValueError)


def digest(key: bytes, challenge: bytes) -> bytes:
    """The answer to ``challenge`` that proves knowledge of ``key``."""
    import hmac  # here: a worker that uses no IPC object never loads OpenSSL's hashes

    return hmac.new(key, challenge, "sha256").digest()


def _error_bytes(exc: object) -> bytes:
    try:
        return pickle.dumps(exc, 5)
    # Broad on purpose: pickling runs the exception's own __reduce__ (a user class).
    except Exception:
        return pickle.dumps(RuntimeError(repr(exc)), 5)


class _RemoteReply:
    """The waiter the state machines see for a request that came over a connection: it
    answers on that connection."""

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
        self.waiting: dict[int, _RemoteReply] = {}  # rid -> its reply, until answered

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
        self.dirty: set[_Conn] = set()  # connections with replies to write
        self.backend: Backend | None = None
        self.loop_thread: int | None = None
        self.pid = os.getpid()
        self._finalizer = weakref.finalize(self, _close_listener, self.listener)

    # --- objects and handles ---------------------------------------------------------------

    def try_post(self, oid: int, item: bytes) -> bool:
        """Append ``item`` to queue ``oid`` if that is all a put would do (see
        ``QueueState.try_post``): the fast path of the bulk of queue traffic, posts."""
        state = self.objects.get(oid)
        return type(state) is _objects.QueueState and state.try_post(item)

    def get(self, oid: int) -> _objects.State:
        """The state of object ``oid``.

        Raises:
            ClosedResourceError: it no longer exists (its last handle is gone).
        """
        state = self.objects.get(oid)
        if state is None:
            raise ClosedResourceError("the object no longer exists")
        return state

    def create_from(self, spec: bytes) -> list[int]:
        """Create an object described by a pickled (kind, params); return its oid(s), each
        with one handle (the creator's)."""
        kind, params = pickle.loads(spec)
        oids = []
        for state in _objects.create(kind, params, self.objects):
            state.oid = oid = next(self.oids)
            state.handles += 1
            self.objects[oid] = state
            oids.append(oid)
        return oids

    def attach(self, oid: int, conn: _Conn | None = None) -> None:
        self.get(oid).handles += 1
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
            if conn.handles[oid] == 0:
                state.handles_gone(conn)  # what a queue lent to that process comes back
        state.handles -= 1
        if state.handles <= 0:
            for gone in state.release():
                self.objects.pop(gone.oid, None)

    def handle_op(self, op: int, oid: int, arg: bytes, conn: _Conn | None = None) -> bool:
        """Apply ``op`` if it is about handles (attach, detach, transit, adopt), for
        ``conn``'s process or (None) this one's; False if it is not."""
        if op == OP_DETACH:
            self.detach(oid, conn)
        elif op == OP_ATTACH:
            self.attach(oid, conn)
        elif op == OP_TRANSIT:
            self.transit(oid, int.from_bytes(arg, "little"))
        elif op == OP_ADOPT:
            self.adopt(oid, int.from_bytes(arg, "little"), conn)
        else:
            return False
        return True

    # --- the event loop --------------------------------------------------------------------

    def ensure_attached(self) -> None:
        """Serve connections from the event loop running in this thread, if any."""
        from ._loop import current_backend  # not at import: _loop imports asyncio

        try:
            backend = current_backend()
        except RuntimeError:
            return
        if backend is self.backend:
            return
        old = self.backend
        if old is not None:
            with contextlib.suppress(*LOOP_GONE):
                old.remove_reader(self.listener.fileno())
            for conn in self.conns.values():
                with contextlib.suppress(*LOOP_GONE):
                    old.remove_reader(conn.fd)
        self.backend = backend
        self.loop_thread = threading.get_ident()
        backend.add_reader(self.listener.fileno(), self._accept)
        for conn in self.conns.values():
            backend.add_reader(conn.fd, functools.partial(self._on_readable, conn))

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:  # nothing more to accept (BlockingIOError), or closed
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
            challenge = os.urandom(CHALLENGE)
            try:
                sock.send(challenge)  # a fresh socket's buffer has room for 32 bytes
            except OSError:
                sock.close()
                continue
            conn = _Conn(self, sock, challenge)
            self.conns[conn.fd] = conn
            _fds.register_fds(conn.fd)
            if self.backend is not None and self.loop_thread == threading.get_ident():
                self.backend.add_reader(conn.fd, functools.partial(self._on_readable, conn))
                conn.deadline = self.backend.call_later(
                    _HANDSHAKE_TIMEOUT, functools.partial(self._handshake_overdue, conn)
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
        import hmac  # see digest()

        if not hmac.compare_digest(conn.answer[:32], digest(self.key, challenge)):
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
        try_post = self.try_post
        hub_call = _wire.HubCall
        try:
            for msg in conn.reader.feed(data):
                if type(msg) is not hub_call:
                    raise SerializationError(f"a {type(msg).__name__} message sent to the hub")
                if msg.rid == 0 and msg.op == OP_PUT and try_post(msg.oid, msg.arg):
                    continue  # a post to a queue with room and nobody waiting: appended
                self._dispatch(conn, msg)
        # Broad on purpose: framing lost, or a message no hub accepts or can answer (or a
        # bug here, logged with its traceback): that peer loses its connection; nothing
        # escapes into the event loop (or into a blocking call serving the hub), and
        # other processes are served on.
        except Exception as exc:
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
            withdrawn = conn.waiting.pop(target, None)
            if withdrawn is not None:
                state = self.objects.get(withdrawn.oid)
                if state is not None:
                    state.cancel(withdrawn)
            conn.reply(target, STATUS_CANCELLED, b"")
            return
        reply = _RemoteReply(conn, rid, msg.oid)
        try:
            if self.handle_op(op, msg.oid, msg.arg, conn):
                return  # posts: no answer
            if op == OP_CREATE:
                oids = self.create_from(msg.arg)
                conn.handles.update(oids)
                if rid:
                    conn.waiting[rid] = reply
                    reply.resolve(pickle.dumps(oids, 5))
                return
            state = self.get(msg.oid)
            if op == OP_GETFD:
                fd = getattr(state, "fd", None)
                if fd is None:
                    raise ValueError(f"a {state.kind} has no file descriptor")
                conn.reply_fd(rid, fd)
                return
            if rid:
                conn.waiting[rid] = reply
            state.handle(op, msg.arg, reply)
        # Broad on purpose: whatever the request made fail (a bad spec, an object gone,
        # a user class's __reduce__ run by unpickling a creation spec) goes back to its
        # sender as the answer.
        except Exception as exc:
            if rid:
                conn.waiting[rid] = reply
            reply.fail(exc)

    def flush(self) -> None:
        """Write the replies waiting in the connections' buffers."""
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
            self.backend.add_writer(conn.fd, functools.partial(self._on_writable, conn))

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
        backend = self.backend
        if backend is not None:
            with contextlib.suppress(*LOOP_GONE):
                backend.remove_reader(conn.fd)
            if conn.writing:
                with contextlib.suppress(*LOOP_GONE):
                    backend.remove_writer(conn.fd)
        _fds.unregister_fds(conn.fd)
        conn.sock.close()
        for _, _, fd in conn.fd_frames:
            os.close(fd)
        conn.fd_frames.clear()
        for reply in conn.waiting.values():
            state = self.objects.get(reply.oid)
            if state is not None:
                state.cancel(reply)
        conn.waiting.clear()
        for state in list(self.objects.values()):
            state.owner_gone(conn)
        for oid, count in list(conn.handles.items()):
            for _ in range(count):
                self.detach(oid, conn)
        self.flush()

    # --- blocking calls in the hosting process ---------------------------------------------

    def pump(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Serve connections from this thread until ``done()`` or time is up.

        Used by ``.sync`` calls in the hosting process: while one blocks, its event loop
        (if any) cannot run, so the call serves the hub itself.
        """
        while not done():
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
        self.pump(_never, 0.0)

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._lost(conn)
        if self.backend is not None:
            with contextlib.suppress(*LOOP_GONE):
                self.backend.remove_reader(self.listener.fileno())
        _fds.unregister_fds(self.listener.fileno())
        self._finalizer()


def _never() -> bool:
    return False


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


# --- this process's hub --------------------------------------------------------------------

_local: Hub | None = None
_lock = threading.Lock()


def local_hub() -> Hub:
    """This process's hub, created on first use."""
    global _local
    with _lock:
        if _local is None or _local.pid != os.getpid():
            _local = Hub()
        return _local


def hosted() -> Hub | None:
    """This process's hub if it has one (never creates it)."""
    local = _local
    if local is not None and local.pid == os.getpid():
        return local
    return None


def _after_fork_in_child() -> None:
    global _local
    local = _local
    if local is not None:
        if _role.parent_hub() is None:
            _role.set_default(local.address, local.key)  # the parent hosts our objects
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


os.register_at_fork(after_in_child=_after_fork_in_child)
