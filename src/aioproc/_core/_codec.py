"""Values across processes: exact Python semantics, fast for the common case.

Values travel as pickle protocol 5, so a tuple stays a tuple and every picklable type works.
Plain ``pickle`` is tried first because it is C-fast; a payload that names ``__main__`` (a
function or class defined in the running script, a notebook or ``python -c``) is re-pickled
by value with cloudpickle, because the other process's ``__main__`` is not ours. Lambdas,
closures and nested functions, which pickle refuses, go through cloudpickle too.

Exceptions are sent as ``(exception, formatted traceback)``. One that cannot be pickled, or
that cannot be rebuilt on the other side, becomes a :class:`RemoteError` carrying its type
name, message and traceback.

Values with large buffers travel through shared memory instead: see ``_payload``, which
builds on this module and the IPC hub.
"""

from __future__ import annotations

import collections
import functools
import inspect
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

import msgspec

from .._exceptions import (
    AioprocError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    ValidationError,
)

__all__ = (
    "MAIN",
    "PROTOCOL",
    "UNTYPED",
    "ItemCodec",
    "dumps",
    "dumps_error",
    "dumps_function",
    "loads",
    "loads_error",
    "type_name",
)

PROTOCOL = 5  # pickle protocol 5: out-of-band buffers (see _payload)
MAIN = b"__main__"  # in a pickle: it names the sender's __main__, which the receiver has not
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
    _pickler()(out, protocol=PROTOCOL).dump(obj)
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
    import cloudpickle  # here: most values pickle without it, and it takes ~25 ms to import

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
    return msgspec.Meta(**given)


def _annotations(cls: type) -> Any:
    """``cls``'s own annotations, with forward references (``"Node"``, ``list["Node"]``,
    all of them under ``from __future__ import annotations``) evaluated where possible."""
    try:
        own = inspect.get_annotations(cls)  # a new dict
    except Exception:  # the class's own code (a descriptor, a metaclass): sent as it is
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

    # Evaluating runs the script's own expressions: any error may come out of them.
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
    # Pickling runs the value's own __reduce__ and the like: any error may come out of it.
    try:
        data = _pickle_dumps(obj, PROTOCOL)
    except Exception:
        pass
    else:
        if MAIN not in data:
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
    except Exception:  # the object's own __reduce__ may raise anything
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
        return _pickle_dumps((fallback, tb), PROTOCOL)


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


# --- items of queues and pipes -------------------------------------------------------------

UNTYPED: Any = None  # a channel without a declared type: its items are pickled


class ItemCodec:
    """How a Queue's or a Pipe's items are encoded: pickle (exact Python values) or msgspec
    (a declared type: validated on receipt)."""

    def __init__(self, type_: Any) -> None:
        self.type = type_
        self.encoder: msgspec.msgpack.Encoder | None = None
        self.decoder: msgspec.msgpack.Decoder[Any] | None = None
        if type_ is UNTYPED:
            self.encode = dumps  # type: ignore[method-assign,assignment]
        else:
            self.encoder = msgspec.msgpack.Encoder()
            self.decoder = msgspec.msgpack.Decoder(type_)

    def encode(self, item: Any) -> bytes:
        assert self.encoder is not None
        try:
            return self.encoder.encode(item)
        except (TypeError, UnicodeEncodeError, msgspec.EncodeError) as exc:  # a lone surrogate
            raise SerializationError(f"cannot encode {type_name(item)!r}: {exc}") from exc

    def decode(self, blob: bytes) -> Any:
        """Rebuild one item; a bad one raises here, and only that item is lost.

        Raises:
            ValidationError: (typed) the message does not match the type, is not msgpack,
                holds a string that is not UTF-8, or nests deeper than the decoder's
                recursion limit (msgspec lets UnicodeDecodeError and RecursionError
                through for the last two).
            SerializationError: (untyped) the item cannot be unpickled (garbage bytes, a
                class that is not importable here, a ``__reduce__`` that raises).
        """
        if self.decoder is None:
            try:
                return loads(blob)
            except AioprocError:
                raise  # already says what went wrong (a proxy whose object is gone...)
            # Broad on purpose: unpickling runs the item's own code (its class's __reduce__,
            # __setstate__...), which may raise anything.
            except Exception as exc:
                raise SerializationError(f"cannot unpickle the item: {exc!r}") from exc
        try:
            return self.decoder.decode(blob)
        except msgspec.ValidationError as exc:
            raise ValidationError(str(exc)) from None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ValidationError(f"malformed message: {exc}") from None
