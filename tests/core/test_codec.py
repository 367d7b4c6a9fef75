"""Values across processes: exact types, functions by value, exceptions that travel, and the
parts of shared-memory payloads that need no hub (no process is started here)."""

from __future__ import annotations

import os
import pickle

import pytest

import aioproc
from aioproc._core import _codec, _payload


def test_codec_keeps_exact_types_and_sends_main_by_value() -> None:
    value = {"t": (1, 2), "l": [1, 2], "s": {3}, "b": b"x"}
    assert _codec.loads(_codec.dumps(value)) == value
    assert type(_codec.loads(_codec.dumps((1,)))) is tuple
    assert _codec.loads(_codec.dumps_function(lambda x: x + 1))(1) == 2


def test_errors_that_cannot_travel_become_remote_errors() -> None:
    class Local(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(a)

    try:
        raise Local(1, 2)
    except Local as exc:
        back = _codec.loads_error(_codec.dumps_error(exc))
    assert isinstance(back, aioproc.RemoteError)
    assert back.type_name.endswith("Local")
    assert "raise Local(1, 2)" in back.traceback


def test_a_main_function_travels_by_value() -> None:
    def local(x: int) -> int:
        return x * 2

    local.__module__ = "__main__"
    blob = _codec.dumps_function(local)
    assert b"cloudpickle" in blob  # by value: the other process has not our __main__
    assert _codec.loads(blob)(21) == 42


def test_what_does_not_pickle_is_named() -> None:
    import threading

    with pytest.raises(aioproc.SerializationError, match=r"item 1 of type '_thread.lock'"):
        _codec.dumps((1, threading.Lock()))


def test_an_exception_that_does_not_rebuild_is_a_serialization_error() -> None:
    error = _codec.loads_error(b"junk")
    assert isinstance(error, aioproc.SerializationError)
    assert "cannot rebuild the remote exception" in str(error)


def test_type_name() -> None:
    assert _codec.type_name(1) == "int"
    assert _codec.type_name(aioproc.RemoteError("x", "y", "z")) == "aioproc.RemoteError"


def test_big_buffers_are_found_without_pickling() -> None:
    big = b"x" * _payload.OOB_THRESHOLD
    assert not _payload.has_big_buffers(((b"x" * 100,), None))
    assert _payload.has_big_buffers(big)
    assert _payload.has_big_buffers(((1, [big]), None))
    assert _payload.has_big_buffers({"k": memoryview(big)})
    assert not _payload.has_big_buffers([[[[big]]]])  # deeper than looked at
    assert not _payload.has_big_buffers([0] * 100 + [big])  # past the items looked at


def test_small_values_travel_in_band() -> None:
    blob, release = _payload.dumps_maybe_large(((1, b"small"), None))
    assert release is None
    assert _payload.loads_any(blob) == ((1, b"small"), None)


def test_an_envelope_pickles_with_its_blocks_and_transit_tokens() -> None:
    blocks = [(5, b"token"), (6, b"")]
    layout = [(0, 0, 10, 1), (1, 4096, 20, 3)]
    oob = _payload.OutOfBand(b"data", "addr", b"key", blocks, layout)
    back = pickle.loads(pickle.dumps(oob, 5))
    assert (back.data, back.address, back.key, back.blocks, back.layout) == (
        b"data",
        "addr",
        b"key",
        blocks,
        layout,
    )


def test_map_shared_read_only_and_buffer_address() -> None:
    fd = os.memfd_create("aioproc-test")
    try:
        os.ftruncate(fd, 2 * 4096)
        os.pwrite(fd, b"hello", 4096)
        view = _payload.map_shared(fd, 4096, 4096, readonly=True)
    finally:
        os.close(fd)
    assert view.readonly and bytes(view[:5]) == b"hello"
    with pytest.raises(TypeError):
        view[0] = 0
    start = _payload.buffer_address(view)
    assert start % 4096 == 0
    assert _payload.buffer_address(view[7:]) == start + 7
    assert _payload.buffer_address(b"") >= 0  # read-only objects have an address too
    view.release()


def test_map_shared_maps_a_block_and_keeps_no_fd() -> None:
    fd = os.memfd_create("aioproc-test")
    try:
        os.ftruncate(fd, 3 * 4096)
        os.pwrite(fd, b"hello", 4096)
        view = _payload.map_shared(fd, 4096, 4096)
        assert bytes(view[:5]) == b"hello"
        view[:5] = b"HELLO"  # writable, and shared: the block itself changes
        assert os.pread(fd, 5, 4096) == b"HELLO"
    finally:
        os.close(fd)
    assert bytes(view[:5]) == b"HELLO"  # the mapping outlives the descriptor
    view.release()
