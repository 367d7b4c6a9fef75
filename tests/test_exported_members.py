"""The package root exports exactly its public names, sorted, under stable module names."""

from __future__ import annotations

import subprocess
import sys

import pytest

import aioproc


def test_all_is_sorted_and_complete() -> None:
    assert list(aioproc.__all__) == sorted(aioproc.__all__)
    public = {name for name in dir(aioproc) if not name.startswith("_")}
    assert public - {"annotations", "importlib", "TYPE_CHECKING", "Any"} == set(aioproc.__all__)


def test_every_export_resolves_with_a_stable_module_name() -> None:
    for name in aioproc.__all__:
        obj = getattr(aioproc, name)
        assert obj.__module__ == "aioproc", name


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        aioproc.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_workers_do_not_import_the_public_api() -> None:
    # A worker imports aioproc._core; asyncio and the pool must stay out of its start-up.
    code = (
        "import sys, aioproc._core._worker, aioproc._core._hub; "
        "print('asyncio' in sys.modules, 'aioproc._pool' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_every_error_is_defined_in_the_exceptions_module() -> None:
    import importlib
    import pkgutil

    from aioproc import _exceptions

    strays = set()
    for info in pkgutil.walk_packages(aioproc.__path__, "aioproc."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__.split(".")[0] == "aioproc"
                and getattr(_exceptions, obj.__name__, None) is not obj
            ):
                strays.add(f"{info.name}.{name}")
    assert sorted(strays) == []
