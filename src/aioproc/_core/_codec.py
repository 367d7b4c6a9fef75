"""Values across processes: exact Python semantics, fast for the common case.

Values travel as pickle protocol 5, so a tuple stays a tuple and every picklable type works.
Plain ``pickle`` is tried first because it is C-fast; a payload that names ``__main__`` (a
function or class defined in the running script, a notebook or ``python -c``) is re-pickled
by value with cloudpickle, because the other process's ``__main__`` is not ours. Lambdas,
closures and nested functions, which pickle refuses, go through cloudpickle too.

Exceptions are sent as ``(exception, formatted traceback)``. One that cannot be pickled, or
that cannot be rebuilt on the other side, becomes a :class:`RemoteError` carrying its type
name, message and traceback.
"""

from __future__ import annotations

import collections
import functools
import io
import linecache
import os
import pickle
import sys
import threading
import traceback
import types
import typing
import weakref
from typing import Any

from .._exceptions import RemoteError, RemoteTraceback, SerializationError

__all__ = (
    "dumps",
    "dumps_error",
    "dumps_function",
    "loads",
    "loads_error",
    "type_name",
)

_PROTOCOL = 5
_MAIN = b"__main__"
_pickle_dumps = pickle.dumps
loads = pickle.loads


def type_name(obj: object) -> str:
    """The qualified name of ``obj``'s type, as error messages show it."""
    cls = type(obj)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _cloudpickle_dumps(obj: object) -> bytes:
    out = io.BytesIO()
    _pickler()(out, protocol=_PROTOCOL).dump(obj)
    return out.getvalue()


@functools.cache
def _pickler() -> Any:
    """cloudpickle's pickler, with what it gets wrong for a script's classes and functions.

    - Code keeps its file name (cloudpickle writes ``<dynamic-code>``), so a worker's
      traceback shows the script's file, line and source line.
    - A ``msgspec.Struct`` class is rebuilt field for field (see :func:`_reduce_struct`),
      and ``msgspec.Meta`` constraints in its annotations pickle.
    - Other classes leave out msgspec's cache (which does not pickle), and every class
      sends its annotations evaluated: the other process, which checks values against
      them in typed queues, has not the script's globals to evaluate forward references
      (``"Node"``, or all of them under ``from __future__ import annotations``) in.
    """
    import cloudpickle
    import msgspec

    base = cloudpickle.Pickler
    override = base.reducer_override
    table = base.dispatch_table
    tables = table.maps if isinstance(table, collections.ChainMap) else [table]
    reduce_code = functools.partial(_reduce_code, table[types.CodeType])

    class Pickler(base):  # type: ignore[misc,valid-type]
        # Looked up for every object: as flat as cloudpickle's own (a nested ChainMap costs
        # a quarter more time on a list of instances). copyreg's table stays a live view.
        dispatch_table: typing.ClassVar[Any] = collections.ChainMap(
            {**tables[0], types.CodeType: reduce_code, msgspec.Meta: _reduce_meta}, *tables[1:]
        )

        def reducer_override(self, obj: Any) -> Any:
            # Called for nearly every object pickled (each instance of a script's class):
            # cloudpickle's own only does something for functions and classes.
            if not isinstance(obj, type):
                return override(self, obj) if type(obj) is types.FunctionType else NotImplemented
            reduced = override(self, obj)
            if reduced is NotImplemented or len(reduced) != 6:
                return reduced  # not a class sent by value
            if _is_struct_class(obj):
                return _reduce_struct(obj)
            state = reduced[2]
            if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
                namespace = state[0]  # a copy of the class's __dict__
                namespace.pop("__msgspec_cache__", None)
                if "__annotations__" in namespace:
                    namespace["__annotations__"] = _annotations(obj)
            return reduced

    return Pickler


_DYNAMIC = "<dynamic-code>"  # the file name cloudpickle gives all code
_filename_at = 0  # where the file name is among the arguments of cloudpickle's reduction


def _reduce_code(reduce: Any, code: types.CodeType) -> Any:
    """cloudpickle's reduction of ``code`` (``reduce``), with the file name put back.

    cloudpickle's is kept for its payloads, which are the same bytes each time a function
    is pickled (the pool recognises a function it has sent by them; marshal's are not).
    Source that is in no file (a notebook cell) travels with the code.
    """
    global _filename_at
    rebuild, args = reduce(code)
    at = _filename_at
    if not (at < len(args) and type(args[at]) is str and args[at] == _DYNAMIC):
        found = [n for n, arg in enumerate(args) if type(arg) is str and arg == _DYNAMIC]
        if not found:
            return rebuild, args
        at = _filename_at = found[0]
    # A copy of the name, as cloudpickle does for its strings: an interned string would be
    # memoized or not depending on what else the pickle holds.
    args = (*args[:at], "".join(code.co_filename), *args[at + 1 :])
    entry = linecache.cache.get(code.co_filename)
    if entry is not None and len(entry) == 4 and entry[1] is None:
        return _rebuild_code, (rebuild, args, entry[2])
    return rebuild, args


def _rebuild_code(rebuild: Any, args: tuple[Any, ...], lines: list[str]) -> types.CodeType:
    code: types.CodeType = rebuild(*args)
    size = sum(map(len, lines))
    linecache.cache.setdefault(code.co_filename, (size, None, lines, code.co_filename))
    return code


def _reduce_meta(meta: Any) -> Any:
    # msgspec.Meta (constraints in Annotated[...] of a script's class) does not pickle.
    keys = [key for key in dir(meta) if not key.startswith("_")]
    given = {key: getattr(meta, key) for key in keys if getattr(meta, key) is not None}
    return _rebuild_meta, (given,)


def _rebuild_meta(given: dict[str, Any]) -> Any:
    import msgspec

    return msgspec.Meta(**given)


def _annotations(cls: type) -> Any:
    """``cls``'s own annotations, with forward references (``"Node"``, ``list["Node"]``,
    all of them under ``from __future__ import annotations``) evaluated where possible."""
    import inspect

    try:
        own = inspect.get_annotations(cls)  # a new dict
    except Exception:  # not a dict: sent as it is
        return vars(cls).get("__annotations__")
    if not own:
        return own
    module = sys.modules.get(cls.__module__)
    globalns = vars(module) if module is not None else {}
    localns = dict(vars(cls))

    def evaluate(annotations: dict[str, Any]) -> dict[str, Any]:
        # The class's own annotations only, evaluated as get_type_hints does for a class.
        probe = type("probe", (), {"__annotations__": annotations})
        return typing.get_type_hints(probe, globalns, localns, include_extras=True)

    try:
        return evaluate(own)
    except Exception:
        pass
    for name, value in own.items():
        try:
            own[name] = evaluate({name: value})[name]
        except Exception:
            pass  # left as it is: the receiver may still resolve it
    return own


def _is_struct_class(cls: type) -> bool:
    msgspec = sys.modules.get("msgspec")
    return msgspec is not None and isinstance(cls, type(msgspec.Struct))


# A Struct class sent by value keeps its identity: the class rebuilt from a given one is
# reused by every later pickle that names it, and the process it came from gets back its own.
_class_ids: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()
_classes: weakref.WeakValueDictionary[str, type] = weakref.WeakValueDictionary()
_unfinished: weakref.WeakSet[type] = weakref.WeakSet()  # built, their state not yet set
_classes_lock = threading.Lock()


def _reduce_struct(cls: type) -> Any:
    """How a ``msgspec.Struct`` class defined in the script travels.

    ``StructMeta`` lays the fields out when the class is created, from the annotations and
    defaults of the class body: cloudpickle's way, an empty class then filled attribute by
    attribute, makes a Struct without fields. So the class is created again from what its
    body declared (its own fields, their defaults and names on the wire, its options);
    everything else (methods, class variables, the evaluated annotations) is set once it
    exists, which is also what lets a method or an annotation refer to the class itself.
    msgspec reads ``__post_init__`` only at creation too: a stand-in, :func:`_post_init`,
    is created with the class, and calls the class's own once it is set.
    """
    import inspect

    import msgspec

    fields: tuple[str, ...] = cls.__struct_fields__  # type: ignore[attr-defined]
    defaults: tuple[Any, ...] = cls.__struct_defaults__  # type: ignore[attr-defined]
    wire: tuple[str, ...] = cls.__struct_encode_fields__  # type: ignore[attr-defined]
    factory_type = getattr(msgspec._core, "Factory", ())
    first_default = len(fields) - len(defaults)
    keyword_only = {
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    body: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    own = [name for name in inspect.get_annotations(cls) if name in fields]
    body["__annotations__"] = dict.fromkeys(own, object)  # the real ones come with the state
    specs: dict[str, dict[str, Any]] = {}  # msgspec.field() arguments (a Field won't pickle)
    for name in own:
        index = fields.index(name)
        spec: dict[str, Any] = {}
        if index >= first_default and defaults[index - first_default] is not msgspec.NODEFAULT:
            default = defaults[index - first_default]
            if isinstance(default, factory_type):
                spec["default_factory"] = default.factory
            else:
                spec["default"] = default
        if wire[index] != name:
            spec["name"] = wire[index]
        if spec:
            specs[name] = spec
    if "__post_init__" in cls.__dict__:
        body["__post_init__"] = _post_init  # the class's own is set with the state

    config = cls.__struct_config__  # type: ignore[attr-defined]
    options = {
        key: getattr(config, key)
        for key in (
            "array_like",
            "cache_hash",
            "dict",
            "eq",
            "forbid_unknown_fields",
            "frozen",
            "gc",
            "omit_defaults",
            "order",
            "repr_omit_defaults",
            "weakref",
        )
    }
    if config.tag is not None:
        options["tag"] = config.tag
        options["tag_field"] = config.tag_field
    if own and all(name in keyword_only for name in own):
        options["kw_only"] = True

    made = {"__module__", "__qualname__"} | set(specs) | set(cls.__dict__.get("__slots__", ()))
    made |= {"__dict__", "__weakref__", "__slots__", "__orig_bases__", "__msgspec_cache__"}
    state = {key: value for key, value in cls.__dict__.items() if key not in made}
    state["__annotations__"] = _annotations(cls)
    bases = cls.__dict__.get("__orig_bases__", cls.__bases__)
    args = (type(cls), cls.__name__, bases, body, specs, options, _class_id(cls))
    return _rebuild_struct, args, state, None, None, _finish_struct


def _post_init(self: Any) -> None:
    """The ``__post_init__`` a rebuilt Struct class is created with: runs the class's own.

    Until the class's attributes are set, it is still this function: an instance rebuilt
    meanwhile (one held by a class variable) was checked where it was made.
    """
    own = type(self).__post_init__
    if own is not _post_init:
        own(self)


def _class_id(cls: type) -> str:
    with _classes_lock:
        found = _class_ids.get(cls)
        if found is None:
            found = _class_ids[cls] = os.urandom(16).hex()
            _classes[found] = cls
        return found


def _rebuild_struct(
    meta: type,
    name: str,
    bases: tuple[Any, ...],
    body: dict[str, Any],
    specs: dict[str, dict[str, Any]],
    options: dict[str, Any],
    key: str,
) -> type:
    found = _classes.get(key)
    if found is not None:
        return found  # this process has it already (or is where it came from)
    import msgspec

    body = {**body, **{field: msgspec.field(**spec) for field, spec in specs.items()}}
    made = types.new_class(name, bases, {"metaclass": meta, **options}, lambda ns: ns.update(body))
    with _classes_lock:
        cls = _classes.setdefault(key, made)
        if cls is made:  # not built meanwhile by another thread
            _class_ids[cls] = key
            _unfinished.add(cls)
    return cls


def _finish_struct(cls: type, state: dict[str, Any]) -> None:
    with _classes_lock:
        if cls not in _unfinished:
            return  # a class of this process: its attributes stay its own
        _unfinished.discard(cls)
    for key, value in state.items():
        setattr(cls, key, value)


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` so that another aioproc process can rebuild it.

    Raises:
        SerializationError: ``obj`` (or something inside it) cannot be pickled.
    """
    by_value = False
    try:
        data = _pickle_dumps(obj, _PROTOCOL)
    except Exception:
        pass
    else:
        if _MAIN not in data:
            return data
        by_value = True  # picklable by reference, but the other process has not our __main__
    try:
        return _cloudpickle_dumps(obj)
    except Exception as exc:
        reason: Exception = exc
        if by_value:  # the cause says what to do too: callers quote it in their own message
            reason = SerializationError(f"{exc}{_BY_VALUE_HINT}")
            reason.__cause__ = exc
        raise SerializationError(f"cannot pickle {_describe(obj)}: {reason}") from reason


def dumps_function(fn: object) -> bytes:
    """Pickle a callable: by reference when importable, by value otherwise."""
    if getattr(fn, "__module__", None) == "__main__":
        try:
            return _cloudpickle_dumps(fn)
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle function {fn!r}: {exc}{_BY_VALUE_HINT}"
            ) from exc
    return dumps(fn)


_BY_VALUE_HINT = (
    "; the script's own classes and functions are sent by value:"
    " move them to a module the other process can import"
)


def _describe(obj: object) -> str:
    """Name the part of ``obj`` that does not pickle, for a useful error message."""
    if isinstance(obj, tuple | list):
        for index, item in enumerate(obj):
            if not _picklable(item):
                return f"item {index} of type {type_name(item)!r} ({_describe(item)})"
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if not _picklable(value):
                return f"value for {key!r} of type {type_name(value)!r}"
    return f"object of type {type_name(obj)!r}"


def _picklable(obj: object) -> bool:
    try:
        _cloudpickle_dumps(obj)
    except Exception:
        return False
    return True


def dumps_error(exc: BaseException) -> bytes:
    """Pickle an exception with its formatted traceback; never raises."""
    tb = "".join(traceback.format_exception(exc))
    try:
        data = dumps((exc, tb))
        # Prove it can be rebuilt here; an exception whose __init__ needs other arguments
        # than its .args would fail on the other side, where we could no longer report it.
        loads(data)
        return data
    except BaseException:
        fallback = RemoteError(type_name(exc), str(exc), tb)
        return _pickle_dumps((fallback, tb), _PROTOCOL)


def loads_error(data: bytes) -> BaseException:
    """Rebuild an exception sent by :func:`dumps_error`, the remote traceback as its cause."""
    try:
        exc, tb = loads(data)
    except BaseException as err:  # even SystemExit from a __reduce__: only this task fails
        error = SerializationError(f"cannot rebuild the remote exception: {err!r}")
        error.__cause__ = err
        return error
    if not isinstance(exc, BaseException):
        return SerializationError(f"expected an exception, got {type_name(exc)!r}")
    exc.__cause__ = RemoteTraceback(tb)
    return exc


# --- large buffers through shared memory ------------------------------------------------------

#: Buffers at least this large travel through shared memory instead of the pipe.
OOB_THRESHOLD = 1 << 20


_SCALARS = frozenset({int, float, str, bool, type(None), complex})
_SCAN_LIMIT = 32  # items of a container looked at: a result list of 100,000 ints is not scanned


def _is_big(value: object) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        return False
    if kind is bytes or kind is bytearray:
        return len(value) >= OOB_THRESHOLD  # type: ignore[arg-type]
    if kind is memoryview:
        return value.nbytes >= OOB_THRESHOLD  # type: ignore[attr-defined,no-any-return]
    nbytes = getattr(value, "nbytes", None)  # numpy arrays and the like
    return isinstance(nbytes, int) and nbytes >= OOB_THRESHOLD


def has_big_buffers(values: object, depth: int = 3) -> bool:
    """Does ``values`` hold a large buffer, at the top or in (the first items of) nested
    tuples, lists and dicts? Cheap by design: it runs for every call and every result."""
    if _is_big(values):
        return True
    if depth <= 0:
        return False
    kind = type(values)
    if kind is tuple or kind is list:
        items = values[:_SCAN_LIMIT]  # type: ignore[index]
    elif kind is dict:
        items = list(values.values())[:_SCAN_LIMIT]  # type: ignore[attr-defined]
    else:
        return False
    return any(type(v) not in _SCALARS and has_big_buffers(v, depth - 1) for v in items)


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

    from . import _client  # the hub sits above the codec (_core/__init__.py)

    buffers: list[pickle.PickleBuffer] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes >= OOB_THRESHOLD:
            buffers.append(buffer)
            return False
        return True

    out = io.BytesIO()
    try:
        pickle.Pickler(out, _PROTOCOL, buffer_callback=keep).dump(_wrap_big(obj))
    except Exception:
        return dumps(obj), None
    data = out.getvalue()
    if _MAIN in data or not buffers:
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
    return _pickle_dumps(envelope, _PROTOCOL), release


def dumps_result(obj: object) -> bytes:
    """A worker's result: large buffers go through shared memory, handed to the parent.

    The block is created by this process; a transit token passes its handle to whoever
    unpickles the envelope, and this process lets go of its own.
    """
    from . import _client  # the hub sits above the codec (_core/__init__.py)

    if not has_big_buffers(obj) or _client.known_address() is None:
        return dumps(obj)  # no hub the parent serves: through the pipe
    envelope, release = dumps_large(obj)
    if isinstance(envelope, bytes):
        return envelope

    envelope.token = _client.Endpoint(envelope.address, envelope.key).hand_over(envelope.oid)
    release()
    return _pickle_dumps(envelope, _PROTOCOL)


def load_large(oob: OutOfBand) -> Any:
    """Unpickle an :class:`OutOfBand` envelope, mapping its block of shared memory."""
    from . import _client, _role  # the hub sits above the codec (_core/__init__.py)

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
    import ctypes
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
