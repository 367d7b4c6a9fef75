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

import pickle
import traceback

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
    import cloudpickle

    return cloudpickle.dumps(obj, protocol=_PROTOCOL)  # type: ignore[no-any-return]


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` so that another aioproc process can rebuild it.

    Raises:
        SerializationError: ``obj`` (or something inside it) cannot be pickled.
    """
    try:
        data = _pickle_dumps(obj, _PROTOCOL)
    except Exception:
        pass
    else:
        if _MAIN not in data:
            return data
    try:
        return _cloudpickle_dumps(obj)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {_describe(obj)}: {exc}") from exc


def dumps_function(fn: object) -> bytes:
    """Pickle a callable: by reference when importable, by value otherwise."""
    if getattr(fn, "__module__", None) == "__main__":
        try:
            return _cloudpickle_dumps(fn)
        except Exception as exc:
            raise SerializationError(f"cannot pickle function {fn!r}: {exc}") from exc
    return dumps(fn)


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
    except Exception as err:
        return SerializationError(f"cannot rebuild the remote exception: {err}")
    if not isinstance(exc, BaseException):
        return SerializationError(f"expected an exception, got {type_name(exc)!r}")
    exc.__cause__ = RemoteTraceback(tb)
    return exc
