"""Framing and envelopes for every channel aioproc reads.

A frame is a 4-byte little-endian length followed by that many bytes of a msgpack-encoded
envelope. Envelopes are small array-like msgspec Structs, one per message kind, told apart
by an integer tag, so a frame costs a few bytes of overhead and one C call each way. The
Encoder and Decoder are built once at import.

Frames longer than ``MAX_FRAME`` are refused on both sides: a hostile or corrupt length
prefix can never make a reader allocate without bound.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from .._exceptions import SerializationError

__all__ = (
    "MAX_FRAME",
    "Ack",
    "Call",
    "Cancel",
    "Config",
    "Define",
    "Done",
    "Drop",
    "End",
    "Failed",
    "HubCall",
    "HubMessage",
    "HubReply",
    "FrameReader",
    "LEND",
    "InitFailed",
    "Item",
    "Log",
    "MODE_CALL",
    "MODE_MAP",
    "MODE_STARMAP",
    "MODE_STREAM",
    "STREAM_WINDOW",
    "Message",
    "Output",
    "Ready",
    "Stop",
    "encode",
    "encode_into",
    "hub_decoder",
    "pack_items",
    "unpack_items",
)

#: Largest envelope accepted on a pipe. Bigger payloads are refused with SerializationError
#: rather than risking a reader's memory on a corrupt prefix.
MAX_FRAME = 1 << 30

_HEADER = 4


class _Msg(msgspec.Struct, array_like=True, gc=False, tag_field="k"):
    pass


# --- parent -> worker ---------------------------------------------------------------------


class Define(_Msg, tag=1):
    """Teach a worker function ``fn`` (pickled) under a small integer id."""

    fn: int
    blob: bytes


class Call(_Msg, tag=2):
    """Run a task. ``mode``: see the MODE_* constants.

    ``skip``: for a map chunk, how many of its items the parent already has (a retry after
    the worker died runs only the rest).
    """

    id: int
    fn: int
    args: bytes
    mode: int = 0
    skip: int = 0


class Cancel(_Msg, tag=3):
    """Cancel a running coroutine task (async workers) or stream."""

    id: int


class Ack(_Msg, tag=4):
    """The parent consumed ``n`` more items of stream ``id``: credit for the generator."""

    id: int
    n: int


class Drop(_Msg, tag=5):
    """Forget function ``fn``."""

    fn: int


class Stop(_Msg, tag=6):
    """Finish what is running, then exit."""


class Config(_Msg, tag=7):
    """The first frame a worker reads: how to set itself up."""

    # Paths and the environment travel as the OS's bytes: a name that is not valid UTF-8
    # (os.fsencode's surrogate escapes) must not stop a pool from starting.
    sys_path: list[bytes]
    cwd: bytes
    init: bytes = b""  # pickled (initializer, initargs), or empty
    max_tasks: int = 0  # 0: no limit
    concurrency: int = 1
    log_level: int = 30
    env: dict[bytes, bytes] | None = None  # forkserver: the parent's environment of today
    hub: str = ""  # where IPC objects live, if the parent has any (see _hub)
    hub_key: bytes = b""
    process: bool = False  # an aioproc.Process: one call, then exit with its status


# --- worker -> parent ---------------------------------------------------------------------


class Ready(_Msg, tag=16):
    """The worker started and ran its initializer."""

    pid: int


class Done(_Msg, tag=17):
    """Task ``id`` returned ``value`` (pickled)."""

    id: int
    value: bytes


class Failed(_Msg, tag=18):
    """Task ``id`` raised; ``error`` is a pickled (exception, traceback text) pair."""

    id: int
    error: bytes


class Item(_Msg, tag=19):
    """Stream ``id`` yielded ``value`` (pickled); for a map chunk, ``value`` is the list of
    its next results, in input order (the chunk's ``Done`` carries the last ones)."""

    id: int
    value: bytes


class End(_Msg, tag=20):
    """Stream ``id`` is exhausted."""

    id: int


class Output(_Msg, tag=21):
    """Bytes the worker wrote to ``sys.stdout`` (fd 1) or ``sys.stderr`` (fd 2)."""

    fd: int
    data: bytes


class Log(_Msg, tag=22):
    """A logging record, as a pickled dict for ``logging.makeLogRecord``."""

    record: bytes


class InitFailed(_Msg, tag=23):
    """The initializer raised; ``error`` as in Failed."""

    error: bytes


# --- IPC hub (any process <-> the process hosting the objects) ------------------------------

# The operations of HubCall.op. Those below 90 act on an object's state (_objects); the
# hub itself answers the rest (handles, creation, cancellation, descriptors).
OP_PUT = 1  # queue, pipe end: put an item (waits while a bounded queue is full)
OP_PUT_NOWAIT = 2
OP_GET = 3  # queue, pipe end: take the next item (waits while empty)
OP_GET_NOWAIT = 4
OP_CLOSE = 5  # queue: no more puts; getters drain what is left
OP_PUT_FRONT = 6  # queue, pipe end: give back an item granted to a get that was cancelled
# queue, from another process than the hosting one: up to ``want`` items at once, *lent* to
# that process until it settles them (arg: LEND.pack(want, done), ``done`` settling as
# OP_SETTLE does first; the reply: pack_items(batch)). Parks like OP_GET while empty.
OP_GET_MANY = 7
# queue, a post: of the items lent to this process, the first ``done`` were handed out (they
# are gone), the next ``back`` go back to the front of the queue (arg: LEND.pack(done, back))
OP_SETTLE = 8
OP_ACQUIRE = 10  # lock, semaphore
OP_TRY_ACQUIRE = 11
OP_RELEASE = 12
OP_SET = 30  # event
OP_CLEAR = 31
OP_WAIT = 32
OP_COND_WAIT = 40  # condition: release its lock, wait for a notify, take the lock again
OP_NOTIFY = 41
OP_BARRIER_WAIT = 50
OP_ABORT = 51
OP_RESET = 52
OP_METHOD = 60  # dict, list, namespace: call a method (pickled name, args, kwargs)
OP_STATS = 90  # any object: its statistics (a pickled dict)
OP_ATTACH = 91  # take one more handle on the object
OP_DETACH = 92  # let go of a handle; the object goes with its last one
OP_CANCEL = 93  # withdraw request ``arg`` (8 bytes, little-endian) of this connection
OP_CREATE = 94  # create objects from a pickled (kind, params); the reply lists their oids
OP_TRANSIT = 95  # a handle held by a pickled proxy until a receiver adopts it (token: arg)
OP_ADOPT = 96  # the receiver takes over the handle in transit under token ``arg``
OP_GETFD = 97  # the reply carries the object's file descriptor (SCM_RIGHTS)

# The statuses of HubReply.status.
STATUS_OK = 0
STATUS_ERROR = 1  # the value is the pickled exception
STATUS_CANCELLED = 2  # the answer to OP_CANCEL: the request was withdrawn, nothing granted
STATUS_DROPPED = 3  # rid 0: the hub is closing this connection; the value says why (utf-8)


class HubCall(_Msg, tag=32):
    """Operation ``op`` (an ``OP_*``) on object ``oid``; ``rid`` 0 asks for no reply (a post)."""

    rid: int
    oid: int
    op: int
    arg: bytes = b""


class HubReply(_Msg, tag=33):
    """The answer to request ``rid``, with a ``STATUS_*``: 0 ok, 1 error (pickled), 2
    cancelled, 3 (rid 0) the connection is being dropped (the value says why).

    A reply of rid 0 and status 1 tells that a post failed: its value is the pickled
    ``(oid, exception)``, raised by the next post to that object.
    """

    rid: int
    status: int
    value: bytes = b""


HubMessage = HubCall | HubReply

#: The argument of OP_GET_MANY (want, done) and OP_SETTLE (done, back): two counts.
LEND = struct.Struct("<II")

_items_encoder = msgspec.msgpack.Encoder()
_items_decoder: msgspec.msgpack.Decoder[list[bytes]] = msgspec.msgpack.Decoder(list[bytes])


def pack_items(items: list[bytes]) -> bytes:
    """A batch of queue items as one reply value (OP_GET_MANY)."""
    return _items_encoder.encode(items)


def unpack_items(value: bytes) -> list[bytes]:
    """The items of a batch packed by :func:`pack_items`.

    Raises:
        SerializationError: ``value`` is not such a batch.
    """
    try:
        return _items_decoder.decode(value)
    except msgspec.DecodeError as exc:
        raise SerializationError(f"malformed batch of items: {exc}") from exc


hub_decoder: msgspec.msgpack.Decoder[HubMessage] = msgspec.msgpack.Decoder(HubMessage)

Message = (
    Define
    | Call
    | Cancel
    | Ack
    | Drop
    | Stop
    | Config
    | Ready
    | Done
    | Failed
    | Item
    | End
    | Output
    | Log
    | InitFailed
)

MODE_CALL = 0  # fn(*args, **kwargs) -> value
MODE_MAP = 1  # [fn(x) for x in items] -> Item(list)... Done(list): results as they finish
MODE_STARMAP = 2  # [fn(*a) for a in items] -> the same
MODE_STREAM = 3  # fn(*args, **kwargs) is a (async) generator -> Item... End

# Items a stream's generator may run ahead of the parent's consumer; the parent returns
# credit with Ack as its consumer takes them. Larger windows mean fewer Acks, more memory.
STREAM_WINDOW = 64

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def encode_into(msg: Message | HubMessage, buf: bytearray) -> None:
    """Append ``msg`` as one frame to ``buf``.

    Raises:
        SerializationError: the envelope is larger than ``MAX_FRAME``, or cannot be encoded
            (an integer field out of msgpack's range, a string with a lone surrogate).
            ``buf`` is then left as it was: a stray header would corrupt every frame
            after it on that channel.
    """
    start = len(buf)
    buf += b"\0\0\0\0"
    try:
        _encoder.encode_into(msg, buf, start + _HEADER)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        del buf[start:]
        raise SerializationError(f"cannot encode a {type(msg).__name__} frame: {exc}") from exc
    size = len(buf) - start - _HEADER
    if size > MAX_FRAME:
        del buf[start:]
        raise SerializationError(
            f"message of {size} bytes exceeds the frame limit of {MAX_FRAME} bytes"
        )
    buf[start : start + _HEADER] = size.to_bytes(_HEADER, "little")


def encode(msg: Message | HubMessage) -> bytes:
    """Return ``msg`` as one frame."""
    buf = bytearray()
    encode_into(msg, buf)
    return bytes(buf)


class FrameReader:
    """Splits a byte stream into decoded envelopes.

    Feed it whatever ``read()`` returned; it keeps a partial frame for the next feed. A length
    over ``max_frame`` or an envelope that does not decode raises ``SerializationError``; the
    stream is then unusable (framing is lost) and the caller must drop the channel.
    """

    __slots__ = ("_buf", "_decode", "_max")

    def __init__(self, max_frame: int = MAX_FRAME, decoder: Any = None) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._decode = (decoder or _decoder).decode

    def feed(self, data: bytes) -> list[Any]:
        """Return the envelopes completed by ``data``, in order."""
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        out: list[Any] = []
        pos = 0
        end = len(view)
        decode = self._decode
        while end - pos >= _HEADER:
            size = int.from_bytes(view[pos : pos + _HEADER], "little")
            if size > self._max:
                raise SerializationError(
                    f"frame length {size} exceeds the limit of {self._max} bytes"
                )
            stop = pos + _HEADER + size
            if stop > end:
                break
            try:
                out.append(decode(memoryview(view)[pos + _HEADER : stop]))
            except msgspec.DecodeError as exc:
                raise SerializationError(f"malformed frame: {exc}") from exc
            pos = stop
        if buf:
            del buf[:pos]
        elif pos < end:
            buf += view[pos:]
        return out

    def pending(self) -> int:
        """Bytes held back as an incomplete frame."""
        return len(self._buf)
