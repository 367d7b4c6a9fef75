"""Framing: whatever the chunking, frames come out whole; bad input gets a clear error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aioproc
from aioproc._core import _wire

messages = st.one_of(
    st.builds(
        _wire.Call, st.integers(0, 2**63), st.integers(0, 2**31), st.binary(), st.integers(0, 3)
    ),
    st.builds(_wire.Done, st.integers(0, 2**63), st.binary(max_size=5000)),
    st.builds(_wire.Output, st.sampled_from([1, 2]), st.binary()),
    st.builds(_wire.Ack, st.integers(0, 2**63), st.integers(0, 1000)),
    st.just(_wire.Stop()),
)


@given(st.lists(messages, max_size=20), st.lists(st.integers(1, 64), min_size=1))
def test_frames_survive_any_split(msgs: list[_wire.Message], cuts: list[int]) -> None:
    buf = bytearray()
    for msg in msgs:
        _wire.encode_into(msg, buf)
    data = bytes(buf)
    reader = _wire.FrameReader()
    out: list[_wire.Message] = []
    pos = 0
    i = 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        out += reader.feed(data[pos : pos + step])
        pos += step
        i += 1
    assert out == msgs
    assert reader.pending() == 0


@given(st.binary(min_size=1, max_size=200))
def test_garbage_never_crashes_the_reader(junk: bytes) -> None:
    reader = _wire.FrameReader(max_frame=1 << 16)
    try:
        reader.feed(junk)
    except aioproc.SerializationError as exc:
        assert "frame" in str(exc)
    # A reader never holds more than one incomplete frame's worth of bytes.
    assert reader.pending() <= len(junk)


def test_oversized_length_is_refused_before_allocating() -> None:
    reader = _wire.FrameReader(max_frame=1024)
    with pytest.raises(aioproc.SerializationError, match="exceeds the limit of 1024"):
        reader.feed((2**31).to_bytes(4, "little") + b"x")


def test_truncated_frame_waits_for_the_rest() -> None:
    frame = _wire.encode(_wire.Done(7, b"payload"))
    reader = _wire.FrameReader()
    assert reader.feed(frame[:-3]) == []
    assert reader.feed(frame[-3:]) == [_wire.Done(7, b"payload")]


def test_wrong_envelope_is_a_clear_error() -> None:
    body = b"\x93\xff\x01\x02"  # an array with an unknown tag
    with pytest.raises(aioproc.SerializationError, match="malformed frame"):
        _wire.FrameReader().feed(len(body).to_bytes(4, "little") + body)


def test_encoder_refuses_frames_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wire, "MAX_FRAME", 100)
    buf = bytearray(b"keep")
    with pytest.raises(aioproc.SerializationError, match="exceeds the frame limit"):
        _wire.encode_into(_wire.Done(1, b"x" * 200), buf)
    assert buf == b"keep"
