"""The pool's function table: each function is pickled once and known to workers by an id.

A worker is sent a function's pickle (``Define``) before its first call there, and each call
then names the function by id. The table is bounded: the oldest function is dropped
(``Drop`` to every worker that knows it) once ``_FUNCTION_CACHE`` are held.

Invariants:
- ``_blobs`` and ``_by_blob`` are inverse maps of each other: one id per distinct pickle.
- Only functions that are immutable by identity (``cacheable``) are keys of ``_by_obj``; the
  table holds no reference to any other callable after its call was encoded.
"""

from __future__ import annotations

import itertools
import types
from typing import TYPE_CHECKING, Any

from . import _codec

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("FunctionTable", "cacheable")

_FUNCTION_CACHE = 256  # functions a pool keeps pickled; the oldest is dropped past it


def cacheable(fn: object) -> bool:
    """Is ``fn`` immutable by identity, so that its pickle may be reused for later calls?

    Only module-level functions, built-in functions of a module, and classes: what they
    do cannot change while the same object lives. Anything that carries state (a bound
    method such as ``d.get``, a closure, a partial, a callable instance) may change
    between two calls, so it is pickled with each call, and the pool keeps no reference
    to it.
    """
    kind = type(fn)
    if kind is types.FunctionType:
        plain: types.FunctionType = fn  # type: ignore[assignment]
        return plain.__closure__ is None and "<locals>" not in plain.__qualname__
    if kind is types.BuiltinFunctionType:
        owner = fn.__self__  # type: ignore[attr-defined]
        return owner is None or type(owner) is types.ModuleType
    return isinstance(fn, type) and "<locals>" not in fn.__qualname__


class FunctionTable:
    """Function ids and pickles, with a callback for each id dropped from the table."""

    __slots__ = ("_blobs", "_by_blob", "_by_obj", "_ids", "_on_drop")

    def __init__(self, on_drop: Callable[[int], None]) -> None:
        self._ids = itertools.count(1)
        self._by_obj: dict[Any, int] = {}
        self._by_blob: dict[bytes, int] = {}
        self._blobs: dict[int, bytes] = {}
        self._on_drop = on_drop

    def id_of(self, fn: Callable[..., Any]) -> int:
        """The id under which workers know ``fn``; pickles it on first use.

        Raises:
            SerializationError: ``fn`` cannot be pickled.
        """
        # Module-level functions are cached by identity; anything else is pickled each
        # time, and the blob table still spares the workers a second Define.
        # Only cacheable ones are in the table, so a plain function is looked up before it
        # is tested: the hot path, a function seen before, needs no cacheable() test.
        plain = type(fn) is types.FunctionType
        is_cacheable = plain or cacheable(fn)
        if is_cacheable:
            fn_id = self._by_obj.get(fn)
            if fn_id is not None:
                return fn_id
            if plain:
                is_cacheable = cacheable(fn)
        blob = _codec.dumps_function(fn)
        fn_id = self._by_blob.get(blob)
        if fn_id is None:
            fn_id = next(self._ids)
            self._by_blob[blob] = fn_id
            self._blobs[fn_id] = blob
            if len(self._blobs) > _FUNCTION_CACHE:
                self._drop_oldest()
        if is_cacheable:
            if len(self._by_obj) >= _FUNCTION_CACHE:
                del self._by_obj[next(iter(self._by_obj))]
            self._by_obj[fn] = fn_id
        return fn_id

    def pickle(self, fn_id: int) -> bytes:
        """The pickle of a function the table holds (for a ``Define``)."""
        return self._blobs[fn_id]

    def _drop_oldest(self) -> None:
        old = next(iter(self._blobs))
        blob = self._blobs.pop(old)
        del self._by_blob[blob]
        for obj in [o for o, i in self._by_obj.items() if i == old]:
            del self._by_obj[obj]
        self._on_drop(old)
