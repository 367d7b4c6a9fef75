"""Large buffers through shared memory: values whose bytes need not cross a pipe.

A value that holds a large buffer (``bytes``, ``bytearray``, ``memoryview``, a numpy array:
at least ``OOB_THRESHOLD`` bytes, found by :func:`has_big_buffers` without pickling) is
pickled with protocol 5's out-of-band buffers. The buffers go into one block of shared
memory created on the IPC hub, page-aligned one after the other; what crosses the pipe is an
:class:`OutOfBand` envelope (the in-band pickle, the hub's address, the block's id and where
each buffer lies). The receiver asks the hub for the block's fd and reads or maps each buffer.

Who holds the block::

    call arguments (parent -> worker)    the parent's handle, released once the task is done
    results (worker -> parent)           the worker's handle passes to the parent through a
                                         transit token (TRANSIT, then ADOPT), then DETACH

This sits above the hub, which it uses as any client does; :mod:`._codec` (the values
themselves) knows nothing of it.

Tunables:
- ``OOB_THRESHOLD``: below it a buffer is copied through the pipe, which costs less than a
  round trip to the hub and a mapping.
- ``_SCAN_LIMIT``: items of a container looked at by :func:`has_big_buffers`, which runs for
  every call and every result.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

from .._exceptions import SerializationError
from . import _client, _role
from ._codec import MAIN, PROTOCOL, dumps, loads

__all__ = (
    "OOB_THRESHOLD",
    "OutOfBand",
    "dumps_large",
    "dumps_maybe_large",
    "dumps_result",
    "has_big_buffers",
    "load_large",
    "loads_any",
    "map_shared",
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


# How a receiver gets each buffer of a block. A read-only one (bytes) is read with pread
# into a new bytes object, a bytearray into a new bytearray: one copy, no page faults. Any
# other writable one (a numpy array) is mapped, so the receiver's array is writable and
# shares the block instead of copying it.
_READ_BYTES, _MAP, _READ_BYTEARRAY = 0, 1, 2


class OutOfBand:
    """A pickle whose large buffers wait in a block of shared memory."""

    __slots__ = ("address", "data", "key", "layout", "oid", "token")

    def __init__(
        self, data: bytes, address: str, key: bytes, oid: int, layout: list[tuple[int, int, int]]
    ) -> None:
        self.data = data
        self.address = address
        self.key = key
        self.oid = oid
        self.layout = layout
        self.token = b""

    def __reduce__(self) -> Any:
        return (
            _rebuild_oob,
            (self.data, self.address, self.key, self.oid, self.layout, self.token),
        )


def _rebuild_oob(data: bytes, address: str, key: bytes, oid: int, layout: Any, token: bytes) -> Any:
    oob = OutOfBand(data, address, key, oid, layout)
    oob.token = token
    return oob


def dumps_large(obj: object) -> tuple[OutOfBand | bytes, Any]:
    """Pickle ``obj`` with its large buffers in a new block of shared memory.

    Returns:
        an :class:`OutOfBand` envelope and a callable that releases the sender's handle
        on the block (once the receiver is done with it); or, when nothing large was
        found after all, plain pickled bytes and None.
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
    # (offset, size, how the receiver gets it): see _READ_BYTES, _MAP, _READ_BYTEARRAY.
    layout: list[tuple[int, int, int]] = []
    offset = 0
    for buffer in buffers:
        raw = buffer.raw()
        if raw.readonly:
            how = _READ_BYTES
        elif type(memoryview(buffer).obj) is bytearray:
            how = _READ_BYTEARRAY
        else:
            how = _MAP
        layout.append((offset, raw.nbytes, how))
        offset += (raw.nbytes + 4095) & ~4095  # page-aligned, so each can be mapped alone
    endpoint = _client.default_endpoint()
    address, key = endpoint.address, endpoint.key
    (oid,) = endpoint.create("shm", {"size": offset})
    fd = endpoint.get_fd(oid)
    try:
        # Written through the descriptor, not a mapping: no page fault per page here.
        for (start, _, _), buffer in zip(layout, buffers, strict=True):
            view = buffer.raw()
            done = 0
            while done < view.nbytes:
                done += os.pwrite(fd, view[done:], start + done)
    finally:
        os.close(fd)
    envelope = OutOfBand(data, address, key, oid, layout)

    def release() -> None:
        endpoint.detach(oid)

    return envelope, release


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
    envelope, release = dumps_large(obj)
    if isinstance(envelope, bytes):
        return envelope
    # The same handover as a pickled proxy's (Proxy.__reduce__): the envelope's receiver
    # adopts the handle in transit, so the block outlives our release() until then.
    envelope.token = _client.Endpoint(envelope.address, envelope.key).hand_over(envelope.oid)
    release()
    return _pickle_dumps(envelope, PROTOCOL)


def load_large(oob: OutOfBand) -> Any:
    """Unpickle an :class:`OutOfBand` envelope, mapping its block of shared memory."""
    if _role.in_worker and _client.known_address() is None:
        _role.set_default(oob.address, oob.key)  # now we know where the parent's hub is
    endpoint = _client.Endpoint(oob.address, oob.key)
    if oob.token:  # a result: take over the sender's handle, and let go once mapped
        endpoint.adopt(oob.oid, oob.token)
    try:
        fd = endpoint.get_fd(oob.oid)
    finally:
        if oob.token:
            endpoint.detach(oob.oid)
    try:
        buffers: list[Any] = []
        for start, size, how in oob.layout:
            if how == _MAP:
                buffers.append(map_shared(fd, size, start))
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
                buffers.append(data)
    finally:
        os.close(fd)
    # numpy arrays rebuilt here view their mapping (zero-copy, writable): it stays alive as
    # long as they do, and holds no descriptor. bytes come back as the bytes pread made.
    return pickle.loads(oob.data, buffers=buffers)


_MAP_FIXED = 0x10  # <sys/mman.h>: the same on every Linux architecture but alpha and parisc
_libc_mmap: Any = None


def map_shared(fd: int, size: int, offset: int) -> memoryview:
    """A writable view of ``size`` bytes of ``fd`` from ``offset``, mapped shared, that
    keeps no file descriptor open.

    ``mmap.mmap(fd, ...)`` keeps a duplicate of ``fd`` for as long as the mapping lives
    (before Python 3.13's ``trackfd=False``), so every live array would hold one and a
    program keeping a few hundred large results would run out of descriptors. Instead, an
    anonymous ``mmap`` object reserves the address range, and the block is mapped over it
    with ``MAP_FIXED``, which replaces the reservation atomically (the range is ours, so
    nothing else can be there). That object then owns the mapping: it is unmapped once
    the last view of it is gone, and a mapping alone keeps the block's memory alive.
    """
    import ctypes  # here: ~5 ms to import, and only a process that maps a block needs it
    import mmap

    global _libc_mmap
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
        _libc_mmap = fn
    # Private and not reserved: no memory is committed for what is replaced right away.
    reserved = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_NORESERVE", 0))
    anchor = ctypes.c_char.from_buffer(reserved)
    address = ctypes.addressof(anchor)
    del anchor  # it exports the buffer; it must not pin the reservation
    mapped = _libc_mmap(
        address,
        size,
        mmap.PROT_READ | mmap.PROT_WRITE,
        mmap.MAP_SHARED | _MAP_FIXED,
        fd,
        offset,
    )
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
