"""Value and Array: numbers in shared memory, readable and writable from every process."""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING, Any

from ._core import _payload
from ._proxy import Proxy
from ._sync import Lock

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ("Array", "Value", "shared_buffer")

#: multiprocessing's (and the array module's) typecodes.
TYPECODES: dict[str, Any] = {
    "c": ctypes.c_char,
    "u": ctypes.c_wchar,
    "b": ctypes.c_byte,
    "B": ctypes.c_ubyte,
    "h": ctypes.c_short,
    "H": ctypes.c_ushort,
    "i": ctypes.c_int,
    "I": ctypes.c_uint,
    "l": ctypes.c_long,
    "L": ctypes.c_ulong,
    "q": ctypes.c_longlong,
    "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float,
    "d": ctypes.c_double,
}


def _ctype(typecode_or_type: Any) -> Any:
    if isinstance(typecode_or_type, str):
        try:
            return TYPECODES[typecode_or_type]
        except KeyError:
            known = "".join(TYPECODES)
            raise ValueError(
                f"typecode must be one of {known!r} or a ctypes type; got {typecode_or_type!r}"
            ) from None
    if isinstance(typecode_or_type, type) and issubclass(
        typecode_or_type, ctypes._SimpleCData | ctypes.Structure
    ):
        return typecode_or_type
    raise TypeError(
        f"typecode must be a typecode string or a ctypes type; got {typecode_or_type!r}"
    )


class _Shared(Proxy):
    """Shared memory mapped into this process, plus an optional lock."""

    _kind = "shm"

    def _map(self) -> None:
        extra = self._extra
        self._ctype = _ctype(extra["type"])
        fd = self._endpoint.get_fd(self._oid)
        try:
            # Mapped without keeping a descriptor (mmap.mmap would keep a dup of it): a
            # program may hold thousands of Values and Arrays.
            self._mmap = _payload.map_shared(fd, max(extra["size"], 1), 0)
        finally:
            os.close(fd)
        self._lock: Lock | None = extra["lock"]

    def get_lock(self) -> Lock:
        """The :class:`aioproc.Lock` created with this object (``async with v.get_lock()``).

        Raises:
            AttributeError: the object was created with ``lock=False``.
        """
        if self._lock is None:
            raise AttributeError(f"this {type(self).__name__} was created with lock=False")
        return self._lock


def _check_fits(size: int, what: str) -> None:
    """Refuse a block larger than this machine's memory: the kernel would hand out the
    address space, and the first pass over it would bring the OOM killer instead."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):  # pragma: no cover - a platform without these
        return
    if size > memory:
        raise ValueError(
            f"{what} needs {_human(size)}, more than this machine's memory ({_human(memory)})"
        )


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _make_lock(lock: bool | Lock) -> Lock | None:
    if lock is True:
        return Lock()
    if lock is False:
        return None
    if isinstance(lock, Lock):
        return lock
    raise TypeError(f"lock must be True, False or an aioproc.Lock; got {lock!r}")


class Value(_Shared):
    """A single number (or ctypes value) in shared memory.

    Args:
        typecode_or_type: a typecode as in ``multiprocessing``/``array`` (``"i"``, ``"d"``,
            ``"q"``, ...) or a ctypes type.
        value: the initial value.
        lock: True (default) for a new :class:`aioproc.Lock`, False for none, or a lock
            to share. ``v.value += 1`` is a read then a write: take the lock around it.
    """

    def __init__(self, typecode_or_type: Any, *args: Any, lock: bool | Lock = True) -> None:
        ctype = _ctype(typecode_or_type)
        size = ctypes.sizeof(ctype)
        self._create(
            {"size": size},
            {"type": typecode_or_type, "size": size, "lock": _make_lock(lock)},
        )
        self._rebuilt()
        if args:
            self._obj.__init__(*args)

    def _rebuilt(self) -> None:
        self._map()
        self._obj = self._ctype.from_buffer(self._mmap)

    @property
    def value(self) -> Any:
        return self._obj.value

    @value.setter
    def value(self, value: Any) -> None:
        self._obj.value = value

    def __repr__(self) -> str:
        return f"<aioproc.Value {self._ctype.__name__}({self._obj.value!r})>"


class Array(_Shared):
    """A fixed-size array of numbers in shared memory.

    Args:
        typecode_or_type: as for :class:`Value`.
        size_or_initializer: the length (zero-filled), or an iterable of initial values.
        lock: as for :class:`Value`.
    """

    def __init__(
        self,
        typecode_or_type: Any,
        size_or_initializer: int | Iterable[Any],
        *,
        lock: bool | Lock = True,
    ) -> None:
        ctype = _ctype(typecode_or_type)
        if isinstance(size_or_initializer, int):
            if size_or_initializer < 0:
                raise ValueError(f"size must be at least 0; got {size_or_initializer}")
            length, init = size_or_initializer, None
        else:
            init = list(size_or_initializer)
            length = len(init)
        size = ctypes.sizeof(ctype) * length
        _check_fits(size, f"an Array of {length} {ctype.__name__} items")
        self._create(
            {"size": size},
            {"type": typecode_or_type, "size": size, "length": length, "lock": _make_lock(lock)},
        )
        self._rebuilt()
        if init is not None:
            self._obj[:] = init

    def _rebuilt(self) -> None:
        self._map()
        self._length: int = self._extra["length"]
        self._obj = (self._ctype * self._length).from_buffer(self._mmap)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        return self._obj[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._obj[index] = value

    def __iter__(self) -> Iterator[Any]:
        return iter(self._obj[:])

    def numpy(self) -> Any:
        """A numpy array viewing the shared memory itself (no copy); needs numpy.

        Raises:
            TypeError: the array's ctypes type has no numpy equivalent.
        """
        try:
            import numpy as np
        except ImportError:
            raise ImportError(
                'Array.numpy() needs numpy: pip install "aioproc-parallel[numpy]"'
            ) from None
        if self._ctype is ctypes.c_wchar:
            # ctypes describes wchar_t as 'u', which numpy does not read; numpy's own
            # one-character strings have the same layout where wchar_t is 4 bytes.
            if ctypes.sizeof(ctypes.c_wchar) == 4:
                return np.frombuffer(self._mmap, dtype="=U1", count=self._length)
        try:
            return np.ctypeslib.as_array(self._obj)
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise TypeError(
                f"an Array of {self._ctype.__name__} has no numpy view ({exc}); use a numeric "
                f"typecode such as 'i' or 'd'"
            ) from None

    def __repr__(self) -> str:
        return f"<aioproc.Array {self._ctype.__name__}[{self._length}]>"


def shared_buffer(nbytes: int) -> memoryview:
    """A writable buffer of ``nbytes`` (at least 1 MiB) in shared memory, to fill and then
    pass to or return from pool tasks with no copy at all.

    Where a ``bytes`` argument is copied into shared memory on its way (and a ``bytes``
    result too), this buffer is already there: a view of it, or a numpy array over it
    (``np.frombuffer(buf, dtype)``), of 1 MiB or more crosses by reference, and the
    receiving process maps the same memory. It is shared, not copied: what a worker writes
    into it, the caller sees (as with :class:`Array`). Its memory is freed once no process
    maps it any more (this process's last view of it, and every received one, collected).

    Raises:
        ValueError: ``nbytes`` is under 1 MiB (smaller values travel through the pipe,
            copied: use :class:`Array` for small shared data), or over this machine's
            memory.
    """
    if nbytes < _payload.OOB_THRESHOLD:
        raise ValueError(
            f"a shared buffer holds at least {_payload.OOB_THRESHOLD} bytes (smaller values"
            f" are copied through the pipe: use aioproc.Array); got {nbytes}"
        )
    _check_fits(nbytes, "this shared buffer")
    return _payload.new_shared(nbytes)


for _cls in (Value, Array, shared_buffer):
    _cls.__module__ = "aioproc"
