"""Large buffers through shared memory: values whose bytes need not cross a pipe.

A value that holds a large buffer (``bytes``, ``bytearray``, ``memoryview``, a numpy array:
at least ``OOB_THRESHOLD`` bytes, found by :func:`has_big_buffers` without pickling) is
pickled with protocol 5's out-of-band buffers. The buffers go into one block of shared
memory created on the IPC hub, page-aligned one after the other (written with ``pwrite``:
one copy); what crosses the pipe is an :class:`OutOfBand` envelope (the in-band pickle, the
hub's address, the blocks and where each buffer lies). The receiver asks the hub for each
block's fd and maps each buffer (no copy) or, for ``bytes`` and ``bytearray``, which own
their memory, reads it into a new one (one copy)::

    sent                         received
    bytes / bytearray            a new bytes / bytearray, read from the block
    memoryview, numpy array      the same type, a view of the block's mapping (no copy):
                                 read-only if the sent buffer was, else writable and private

Who holds a block::

    call arguments (parent -> worker)    the parent's handle, released once the task's
                                         result is read
    results (worker -> parent)           the worker's handle passes to the parent through a
                                         transit token (TRANSIT, then ADOPT), then DETACH
    an argument sent back (echo)         the worker hands over a handle on the argument's
                                         block (lent while the call runs): no new block

Invariants:
- A block is written once, by its creator, before its envelope leaves; a read-only mapping
  of it is never written, so lending it (see :func:`end_loan`) never shows a receiver a
  change. A writable mapping belongs to one receiver alone and is never lent.
- A mapping holds no file descriptor; it lives as long as the last view of it, and the
  block's memory as long as its last mapping or hub handle.
- A buffer is referred to by a lent block only while the call that lent it runs, so the
  parent still holds the block when it reads the reference (it releases after reading).

This sits above the hub, which it uses as any client does; :mod:`._codec` (the values
themselves) knows nothing of it.

Tunables:
- ``OOB_THRESHOLD``: below it a buffer is copied through the pipe, which costs less than a
  round trip to the hub and a mapping.
- ``_SCAN_LIMIT``: items of a container looked at by :func:`has_big_buffers`, which runs for
  every call and every result.
"""

from __future__ import annotations

import contextlib
import functools
import io
import mmap
import os
import pickle
import weakref
from typing import Any

from .._exceptions import SerializationError
from . import _client, _role
from ._codec import MAIN, PROTOCOL, dumps, loads

__all__ = (
    "OOB_THRESHOLD",
    "Loan",
    "OutOfBand",
    "buffer_address",
    "dumps_large",
    "dumps_maybe_large",
    "dumps_result",
    "end_loan",
    "has_big_buffers",
    "load_large",
    "loads_any",
    "loads_lent",
    "map_shared",
    "new_shared",
)

_pickle_dumps = pickle.dumps


#: Buffers at least this large travel through shared memory instead of the pipe.
OOB_THRESHOLD = 1 << 20


_SCALARS: frozenset[type] = frozenset({int, float, str, bool, type(None), complex})
_SCAN_LIMIT = 32  # items of a container looked at: a result list of 100,000 ints is not scanned

# Types that can never hold a big buffer (no ``nbytes`` attribute on the type), learnt as
# they are met: functions, plain objects and the scalars cost one set lookup, not a failed
# getattr each time. Bounded by the number of distinct types a program passes.
_NOT_BUFFERS: set[type] = set(_SCALARS)


def _is_big(value: object) -> bool:
    kind = type(value)
    if kind in _NOT_BUFFERS:
        return False
    if kind is bytes or kind is bytearray:
        return len(value) >= OOB_THRESHOLD  # type: ignore[arg-type]
    if kind is memoryview:
        return value.nbytes >= OOB_THRESHOLD  # type: ignore[attr-defined,no-any-return]
    if not hasattr(kind, "nbytes"):  # numpy arrays and the like have it on the type
        _NOT_BUFFERS.add(kind)
        return False
    nbytes = getattr(value, "nbytes", None)
    return isinstance(nbytes, int) and nbytes >= OOB_THRESHOLD


def has_big_buffers(values: object, depth: int = 3) -> bool:
    """Does ``values`` hold a large buffer, at the top or in (the first items of) nested
    tuples, lists and dicts? Cheap by design: it runs for every call and every result."""
    kind = type(values)
    items: Any
    if kind is tuple or kind is list:
        items = values if len(values) <= _SCAN_LIMIT else values[:_SCAN_LIMIT]  # type: ignore[arg-type,index]
    elif kind is dict:
        items = values.values()  # type: ignore[attr-defined]
        if len(items) > _SCAN_LIMIT:
            items = list(items)[:_SCAN_LIMIT]
    else:
        return _is_big(values)
    if depth <= 0:
        return False
    for item in items:
        if type(item) not in _SCALARS and has_big_buffers(item, depth - 1):
            return True
    return False


def _rebuild_bytes(buffer: Any) -> bytes:
    return bytes(buffer)


def _rebuild_memoryview(buffer: Any) -> memoryview:
    if type(buffer) is memoryview:
        return buffer  # a view of its block's mapping (see _MAP, _MAP_READONLY): no copy
    return memoryview(_rebuild_bytearray(buffer))


def _rebuild_bytearray(buffer: Any) -> bytearray:
    # load_large reads a bytearray's block straight into a new bytearray: no second copy.
    return buffer if type(buffer) is bytearray else bytearray(buffer)


class _Big:
    """Stands in for a large ``bytes``, ``bytearray`` or ``memoryview`` while pickling.

    The C pickler never consults ``reducer_override`` for ``bytes`` and writes a
    ``bytearray`` in band, so large ones are swapped for this wrapper, whose reduction
    hands the pickler an out-of-band buffer.
    """

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> Any:
        kind = type(self.value)
        if kind is bytes:
            rebuild: Any = _rebuild_bytes
        elif kind is bytearray:
            rebuild = _rebuild_bytearray
        else:
            rebuild = _rebuild_memoryview
        return rebuild, (pickle.PickleBuffer(self.value),)


def _wrap_big(value: Any) -> Any:
    kind = type(value)
    if (kind is bytes or kind is bytearray) and len(value) >= OOB_THRESHOLD:
        return _Big(value)
    if kind is memoryview and value.nbytes >= OOB_THRESHOLD:
        return _Big(value)
    if kind is tuple:
        return tuple(_wrap_big(v) for v in value)
    if kind is list:
        return [_wrap_big(v) for v in value]
    if kind is dict:
        return {k: _wrap_big(v) for k, v in value.items()}
    return value


# How a receiver gets each buffer of a block (the sender picks by the buffer's type):
# - _READ_BYTES: a ``bytes``, read with pread into a new ``bytes`` (one copy). A ``bytes``
#   owns its memory, so one backed by a mapping cannot exist; users get the type they sent.
# - _READ_BYTEARRAY: a ``bytearray``, read into a new ``bytearray`` (one copy), likewise.
# - _MAP: any other writable buffer (a numpy array, a memoryview of a bytearray): mapped
#   writable, so the receiver's value is writable and views the block itself, no copy.
# - _MAP_READONLY: any other read-only buffer (a memoryview of bytes, a read-only array):
#   mapped read-only, no copy. Nobody writes such a block after it is filled, which is what
#   lets a worker send it on (or a slice of it) by reference: see :func:`lend`.
# - _MAP_SHARED: a buffer of a shared buffer (:func:`new_shared`): mapped writable, and
#   shared on purpose (what either side writes, the other sees); lent like _MAP_READONLY.
_READ_BYTES, _MAP, _READ_BYTEARRAY, _MAP_READONLY, _MAP_SHARED = 0, 1, 2, 3, 4

_PAGE = mmap.PAGESIZE


class OutOfBand:
    """A pickle whose large buffers wait in blocks of shared memory.

    ``blocks`` holds, per block, its oid and a transit token (``b""`` when the sender keeps
    its handle until the receiver is done, as for a call's arguments); ``layout`` holds,
    per buffer, (index in ``blocks``, offset, size, how it is received).
    """

    __slots__ = ("address", "blocks", "data", "key", "layout")

    def __init__(
        self,
        data: bytes,
        address: str,
        key: bytes,
        blocks: list[tuple[int, bytes]],
        layout: list[tuple[int, int, int, int]],
    ) -> None:
        self.data = data
        self.address = address
        self.key = key
        self.blocks = blocks
        self.layout = layout

    def __reduce__(self) -> Any:
        return (OutOfBand, (self.data, self.address, self.key, self.blocks, self.layout))


# -- lending: what a worker may send on by reference ------------------------------------------
#
# The blocks of a call's arguments stay alive until the parent has read the call's result (it
# releases its handle after that), so while the call runs, a result or stream item holding an
# argument's buffer (an echo, a slice of a memoryview) can refer to the argument's block
# instead of copying it into a new one: the worker hands a handle over in transit, and the
# parent adopts it before it releases its own. After the call, a buffer kept from it is
# copied as any other: its block may be gone.
#
# Only read-only buffers are lent: a writable one (a numpy array) may be changed by the worker
# later, and the parent's value must not change with it.

# Start address -> (end, oid, offset of the start in the block, the mapping (kept alive, so
# that no other memory can take its address while it is lent), how it is received).
_lent_maps: dict[int, tuple[int, int, int, object, int]] = {}
# Start address -> (end, oid) of this process's shared buffers (new_shared): always sent by
# reference. An entry goes when its mapping is collected, before its address is freed.
_shared_maps: dict[int, tuple[int, int]] = {}
# id(bytes) -> (the bytes (kept alive, so that its id stays its own), oid, offset).
_lent_bytes: dict[int, tuple[bytes, int, int]] = {}


class Loan:
    """The buffers of one call's arguments that its results may refer to (see above)."""

    __slots__ = ("bytes_ids", "map_starts")

    def __init__(self) -> None:
        self.map_starts: list[int] = []
        self.bytes_ids: list[int] = []


def end_loan(loan: Loan) -> None:
    """The call is over (its results are pickled): its buffers are no longer lent."""
    for start in loan.map_starts:
        _lent_maps.pop(start, None)
    for ident in loan.bytes_ids:
        _lent_bytes.pop(ident, None)


def _find_lent(raw: memoryview, how: int) -> tuple[int, int, int] | None:
    """(oid, offset, how to receive it) of the lent or shared block that holds all of
    ``raw``, if one does."""
    obj = raw.obj
    if type(obj) is bytes:
        entry = _lent_bytes.get(id(obj))
        if entry is not None and entry[0] is obj and raw.nbytes == len(obj):
            return entry[1], entry[2], how
        return None
    if not (_lent_maps or _shared_maps):
        return None
    start = buffer_address(raw)
    end = start + raw.nbytes
    # A writable buffer cannot lie in a read-only mapping: what is found writable here is
    # in a shared one, where it is meant to be shared.
    for first, (last, oid, offset, _, kind) in list(_lent_maps.items()):
        if first <= start and end <= last:
            return oid, offset + (start - first), kind if kind == _MAP_SHARED else how
    for first, (last, oid) in list(_shared_maps.items()):
        if first <= start and end <= last:
            return oid, start - first, _MAP_READONLY if raw.readonly else _MAP_SHARED
    return None


def new_shared(nbytes: int) -> memoryview:
    """A writable buffer of ``nbytes`` in a new block of shared memory, which large
    payloads refer to instead of copying it (see ``aioproc.shared_buffer``).

    This process holds a handle on the block as long as the buffer (or any view of it)
    lives; each process it is sent to maps the same block.
    """
    endpoint = _client.default_endpoint()
    (oid,) = endpoint.create("shm", {"size": nbytes})
    try:
        fd = endpoint.get_fd(oid)
        try:
            view = map_shared(fd, nbytes, 0)
        finally:
            os.close(fd)
    except BaseException:
        endpoint.detach(oid)
        raise
    start = buffer_address(view)
    _shared_maps[start] = (start + nbytes, oid)
    weakref.finalize(view.obj, _forget_shared, start, endpoint, oid, os.getpid())
    return view


def _forget_shared(start: int, endpoint: _client.Endpoint, oid: int, pid: int) -> None:
    _shared_maps.pop(start, None)
    if os.getpid() != pid:
        return  # a forked child's copy of the buffer: the handle is its parent's
    # Broad on purpose, as in a __del__: this runs from the garbage collector, at any point
    # of any thread, or at exit; a failure (the hub gone) has nowhere to go.
    with contextlib.suppress(Exception):
        endpoint.detach(oid)


def _after_fork_in_child() -> None:
    # What the parent lent or shares is the parent's to send by reference: a forked child
    # holds no handle on those blocks, so it copies what it sends of them.
    _lent_maps.clear()
    _lent_bytes.clear()
    _shared_maps.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _how(buffer: pickle.PickleBuffer, raw: memoryview) -> int:
    kind = type(memoryview(buffer).obj)
    if kind is bytes:
        return _READ_BYTES
    if kind is bytearray:
        return _READ_BYTEARRAY
    return _MAP_READONLY if raw.readonly else _MAP


def dumps_large(obj: object, *, hand_over: bool = False) -> tuple[OutOfBand | bytes, Any]:
    """Pickle ``obj`` with its large buffers in a new block of shared memory (buffers lent
    to this process are referred to, not copied: see :func:`end_loan`).

    Args:
        hand_over: give the new block's handle to the receiver (a result) instead of
            keeping it until the receiver is done (a call's arguments).

    Returns:
        an :class:`OutOfBand` envelope and a callable that releases the sender's handle
        on the new block (once the receiver is done with it; None when there is none to
        release); or, when nothing large was found after all, plain pickled bytes and None.
    """

    buffers: list[pickle.PickleBuffer] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes >= OOB_THRESHOLD:
            buffers.append(buffer)
            return False
        return True

    out = io.BytesIO()
    try:
        pickle.Pickler(out, PROTOCOL, buffer_callback=keep).dump(_wrap_big(obj))
    except Exception:  # the value's own __reduce__ may raise anything: dumps() names it
        return dumps(obj), None
    data = out.getvalue()
    if MAIN in data or not buffers:
        return dumps(obj), None
    endpoint = _client.default_endpoint()
    address = endpoint.address
    lending = bool(_lent_maps or _lent_bytes or _shared_maps)
    blocks: list[tuple[int, bytes]] = []
    referred: dict[int, int] = {}  # oid of a lent block -> its index in blocks
    layout: list[tuple[int, int, int, int]] = []
    fresh: list[tuple[int, memoryview]] = []  # (offset in the new block, buffer)
    size = 0
    for buffer in buffers:
        raw = buffer.raw()
        how = _how(buffer, raw)
        found = _find_lent(raw, how) if lending else None
        if found is not None:
            oid, offset, how = found
            index = referred.get(oid)
            if index is None:
                index = referred[oid] = len(blocks)
                blocks.append((oid, endpoint.hand_over(oid)))
            layout.append((index, offset, raw.nbytes, how))
            continue
        layout.append((-1, size, raw.nbytes, how))
        fresh.append((size, raw))
        size += (raw.nbytes + _PAGE - 1) & ~(_PAGE - 1)  # page-aligned: each maps alone
    release = None
    if fresh:
        (oid,) = endpoint.create("shm", {"size": size})
        try:
            _fill(endpoint.get_fd(oid), fresh)
        except BaseException:
            endpoint.detach(oid)
            raise
        new = len(blocks)
        layout = [(new if i < 0 else i, o, n, h) for i, o, n, h in layout]
        if hand_over:
            # The same handover as a pickled proxy's (Proxy.__reduce__): the envelope's
            # receiver adopts the handle in transit, so the block outlives our own.
            blocks.append((oid, endpoint.hand_over(oid)))
            endpoint.detach(oid)
        else:
            blocks.append((oid, b""))
            release = functools.partial(endpoint.detach, oid)
    return OutOfBand(data, address, endpoint.key, blocks, layout), release


def _fill(fd: int, fresh: list[tuple[int, memoryview]]) -> None:
    # Written through the descriptor, not a mapping: pwrite measured fastest here (no page
    # fault per page: about 1.7x a mapping + memcpy, see benchmarks `payload`).
    try:
        for start, view in fresh:
            done = 0
            while done < view.nbytes:
                done += os.pwrite(fd, view[done:], start + done)
    finally:
        os.close(fd)


def dumps_maybe_large(obj: object) -> tuple[bytes, Any]:
    """``dumps(obj)``, through shared memory if it holds large buffers.

    Returns:
        the bytes to send, and None or a callable releasing the block once received.
    """
    if not has_big_buffers(obj):
        return dumps(obj), None
    envelope, release = dumps_large(obj)
    if isinstance(envelope, bytes):
        return envelope, None
    return _pickle_dumps(envelope, PROTOCOL), release


def dumps_result(obj: object) -> bytes:
    """A worker's result: large buffers go through shared memory, handed to the parent.

    The block is created by this process; a transit token passes its handle to whoever
    unpickles the envelope, and this process lets go of its own.
    """
    if not has_big_buffers(obj) or _client.known_address() is None:
        return dumps(obj)  # no hub the parent serves: through the pipe
    envelope, _ = dumps_large(obj, hand_over=True)
    if isinstance(envelope, bytes):
        return envelope
    return _pickle_dumps(envelope, PROTOCOL)


def load_large(oob: OutOfBand, loan: Loan | None = None) -> Any:
    """Unpickle an :class:`OutOfBand` envelope, mapping or reading its blocks.

    Args:
        loan: a call's arguments are being loaded: record in it what its results may
            refer to (see :func:`end_loan`).
    """
    if _role.in_worker and _client.known_address() is None:
        _role.set_default(oob.address, oob.key)  # now we know where the parent's hub is
    endpoint = _client.Endpoint(oob.address, oob.key)
    fds: list[int] = []
    try:
        for oid, token in oob.blocks:
            if token:  # handed over: take the handle, and let go once mapped or read
                endpoint.adopt(oid, token)
            try:
                fds.append(endpoint.get_fd(oid))
            finally:
                if token:
                    endpoint.detach(oid)
        buffers: list[Any] = []
        for index, start, size, how in oob.layout:
            fd = fds[index]
            if how == _MAP or how == _MAP_READONLY or how == _MAP_SHARED:
                readonly = how == _MAP_READONLY
                skip = start % _PAGE  # a slice sent on by reference may start mid-page
                view = map_shared(fd, size + skip, start - skip, readonly=readonly)
                if skip:
                    view = view[skip:]
                if loan is not None and how != _MAP:
                    first = buffer_address(view)
                    oid = oob.blocks[index][0]
                    _lent_maps[first] = (first + size, oid, start, view, how)
                    loan.map_starts.append(first)
                buffers.append(view)
            elif how == _READ_BYTEARRAY:
                target = bytearray(size)
                _read_into(fd, memoryview(target), start)
                buffers.append(target)
            else:
                data = os.pread(fd, size, start)
                if len(data) < size:  # one read returns at most 2 GiB - 4 KiB on Linux
                    whole = bytearray(size)
                    whole[: len(data)] = data
                    _read_into(fd, memoryview(whole)[len(data) :], start + len(data))
                    data = bytes(whole)
                if loan is not None:
                    _lent_bytes[id(data)] = (data, oob.blocks[index][0], start)
                    loan.bytes_ids.append(id(data))
                buffers.append(data)
    finally:
        for fd in fds:
            os.close(fd)
    # Values rebuilt on a mapping (numpy arrays, memoryviews) view it: it stays alive as
    # long as they do, and holds no descriptor. bytes come back as the bytes pread made.
    return pickle.loads(oob.data, buffers=buffers)


_MAP_FIXED = 0x10  # <sys/mman.h>: the same on every Linux architecture but alpha and parisc
_libc_mmap: Any = None
_get_buffer: Any = None


def _ctypes_setup() -> Any:
    """libc's mmap and the C API's buffer calls, through ctypes (loaded once)."""
    import ctypes  # here: ~5 ms to import, and only a process that maps a block needs it

    global _libc_mmap, _get_buffer
    if _libc_mmap is None:
        libc = ctypes.CDLL(None, use_errno=True)
        # mmap64 takes a 64-bit offset on 32-bit systems too; musl has only mmap (64-bit).
        fn = getattr(libc, "mmap64", None) or libc.mmap
        fn.restype = ctypes.c_void_p
        fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int64,
        ]

        class PyBuffer(ctypes.Structure):  # Py_buffer, <cpython/object.h>: stable since 3.3
            _fields_ = (
                ("buf", ctypes.c_void_p),
                ("obj", ctypes.c_void_p),
                ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t),
                ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p),
            )

        get = ctypes.pythonapi.PyObject_GetBuffer
        get.argtypes = [ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int]
        get.restype = ctypes.c_int
        put = ctypes.pythonapi.PyBuffer_Release
        put.argtypes = [ctypes.POINTER(PyBuffer)]
        put.restype = None
        _get_buffer = (PyBuffer, get, put)
        _libc_mmap = fn
    return ctypes


def buffer_address(view: Any) -> int:
    """The address of the first byte of a buffer, read-only ones included (ctypes'
    ``from_buffer`` takes only writable ones)."""
    _ctypes_setup()
    struct, get, put = _get_buffer
    info = struct()
    get(view, info, 0)  # PyBUF_SIMPLE; raises (through ctypes) what the object raises
    try:
        return int(info.buf or 0)
    finally:
        put(info)


def map_shared(fd: int, size: int, offset: int, *, readonly: bool = False) -> memoryview:
    """A view of ``size`` bytes of ``fd`` from ``offset`` (a multiple of the page size),
    mapped shared, that keeps no file descriptor open; writable unless ``readonly``.

    ``mmap.mmap(fd, ...)`` keeps a duplicate of ``fd`` for as long as the mapping lives
    (before Python 3.13's ``trackfd=False``), so every live array would hold one and a
    program keeping a few hundred large results would run out of descriptors. Instead, an
    anonymous ``mmap`` object reserves the address range, and the block is mapped over it
    with ``MAP_FIXED``, which replaces the reservation atomically (the range is ours, so
    nothing else can be there). That object then owns the mapping: it is unmapped once
    the last view of it is gone, and a mapping alone keeps the block's memory alive.
    """
    ctypes = _ctypes_setup()
    prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
    # Private and not reserved: no memory is committed for what is replaced right away.
    # Its protection decides whether its views are read-only (PROT_READ: ACCESS_READ).
    reserved = mmap.mmap(
        -1, size, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_NORESERVE", 0), prot=prot
    )
    address = buffer_address(reserved)
    mapped = _libc_mmap(address, size, prot, mmap.MAP_SHARED | _MAP_FIXED, fd, offset)
    if mapped != address:
        errno = ctypes.get_errno()
        # A failed MAP_FIXED may have unmapped the range already, and another thread may
        # map something there: unmapping it now could destroy that. The reservation is
        # kept instead (address space only, never touched).
        _unusable.append(reserved)
        raise OSError(errno, f"cannot map shared memory: {os.strerror(errno)}")
    return memoryview(reserved)


_unusable: list[Any] = []


def _read_into(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise SerializationError("a block of shared memory ended early")
        done += n


def loads_any(blob: bytes) -> Any:
    """``loads``, resolving a shared-memory envelope."""
    value = loads(blob)
    if type(value) is OutOfBand:
        return load_large(value)
    return value


def loads_lent(blob: bytes) -> tuple[Any, Loan | None]:
    """A call's arguments (``loads_any``), and what its results may refer to until
    :func:`end_loan` (None: nothing)."""
    value = loads(blob)
    if type(value) is not OutOfBand:
        return value, None
    loan = Loan()
    try:
        return load_large(value, loan), loan
    except BaseException:
        end_loan(loan)
        raise
