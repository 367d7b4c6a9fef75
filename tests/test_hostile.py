"""Hostile and malformed input on every channel the hub reads (FAULTS.md row 17).

The hub's unix socket is the one channel reachable by a process aioproc did not start, so
it is attacked twice: before authentication by a stranger that only has the address, and
after it by a legitimate child that writes what no aioproc code would. In every case the
parent keeps running, keeps serving the other processes (a queue round trip through a pool
worker, after the attack), drops only the offending connection, and says why: on the
``aioproc`` logger, and to the child, whose next call raises ``ClosedResourceError``
instead of hanging.

Typed channels (Queue and Pipe with ``type=``) are fed the wrong shapes by another process:
``ValidationError`` naming the field, the channel keeps working. Their decoder is also
fuzzed with hypothesis: what conforms round-trips equal, junk is rejected with
``ValidationError`` or (if it happens to conform) decodes equal, and nothing else escapes.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import aioproc
from aioproc._core import _codec, _hub, _wire
from tests import hostile_tasks

pytestmark = pytest.mark.anyio

TIMEOUT = 60  # generous: the machine is shared; nothing here should come near it


def _fds() -> dict[int, str]:
    return hostile_tasks.fds()


async def _fds_settle_to(expected: dict[int, str]) -> None:
    """Wait until this process's fds are ``expected`` again (the hub let go of a peer)."""
    with anyio.fail_after(TIMEOUT):
        while _fds() != expected:
            await anyio.sleep(0.01)


async def _still_serving(pool: aioproc.ProcessPool, value: Any = "still here") -> None:
    """A round trip from a worker through the hub, then one in this process."""
    queue: aioproc.Queue[Any] = aioproc.Queue()
    with anyio.fail_after(TIMEOUT):
        assert await pool.apply(hostile_tasks.round_trip, queue, value) == value
        await queue.put(value)
        assert await queue.get() == value


# --- before authentication: a stranger that knows only the address ----------------------


def _hub_of(queue: aioproc.Queue[Any]) -> _hub.Hub:
    hub = queue._endpoint.hub
    assert hub is not None
    return hub


async def _connect(hub: _hub.Hub) -> tuple[anyio.abc.SocketStream, bytes]:
    stream = await anyio.connect_unix(hub.address)
    challenge = b""
    with anyio.fail_after(TIMEOUT):
        while len(challenge) < 32:
            challenge += await stream.receive(32 - len(challenge))
    return stream, challenge


async def _assert_closed_without_welcome(stream: anyio.abc.SocketStream) -> None:
    """The hub closes the connection, and never sends the one-byte welcome."""
    with anyio.fail_after(TIMEOUT):
        try:
            data = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return
    pytest.fail(f"the hub answered an unauthenticated peer: {data!r}")


class _Touch:
    """A pickle that creates a file when loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


def _pickle_frame(path: Path) -> bytes:
    spec = pickle.dumps(_Touch(str(path)), 5)
    return _wire.encode(_wire.HubCall(1, 0, _wire.OP_CREATE, spec))


def _answers(hub: _hub.Hub, challenge: bytes, tmp_path: Path) -> dict[str, bytes]:
    pid = os.getpid().to_bytes(8, "little")
    return {
        "garbage": b"GET / HTTP/1.1\r\nHost: aioproc\r\n\r\n" + b"\0" * 16,
        "length far over MAX_FRAME": b"\xff\xff\xff\xff" + b"\0" * 36,
        "length just over MAX_FRAME": (_wire.MAX_FRAME + 1).to_bytes(4, "little") + b"\0" * 36,
        "answer made with the wrong key": _hub.digest(os.urandom(32), challenge) + pid,
        "answer to another challenge": _hub.digest(hub.key, os.urandom(32)) + pid,
        "pickle that runs code when loaded": _pickle_frame(tmp_path / "pwned"),
    }


ANSWERS = [
    "garbage",
    "length far over MAX_FRAME",
    "length just over MAX_FRAME",
    "answer made with the wrong key",
    "answer to another challenge",
    "pickle that runs code when loaded",
]


@pytest.mark.parametrize("case", ANSWERS)
async def test_unauthenticated_peer_is_refused(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with aioproc.ProcessPool(1) as pool:
        await _still_serving(pool, "warm-up")  # the worker is connected before the attack
        queue: aioproc.Queue[int] = aioproc.Queue()
        hub = _hub_of(queue)
        before = _fds()
        stream, challenge = await _connect(hub)
        with caplog.at_level(logging.WARNING, logger="aioproc"):
            await stream.send(_answers(hub, challenge, tmp_path)[case])
            await _assert_closed_without_welcome(stream)
            await stream.aclose()
            await _still_serving(pool)
        assert "refused a connection that does not know the key" in caplog.text
        await _fds_settle_to(before)  # nothing kept for the stranger
    # The payload is live (loading it creates its file), yet nothing ever loaded it.
    assert not (tmp_path / "pwned").exists()
    if case.startswith("pickle"):
        pickle.loads(pickle.dumps(_Touch(str(tmp_path / "control")), 5))
        assert (tmp_path / "control").exists()


async def test_truncated_handshake_then_hang_up() -> None:
    async with aioproc.ProcessPool(1) as pool:
        await _still_serving(pool, "warm-up")
        queue: aioproc.Queue[int] = aioproc.Queue()
        before = _fds()
        stream, _ = await _connect(_hub_of(queue))
        await stream.send(b"\x10\x00\x00\x00partial")
        await stream.aclose()
        await _fds_settle_to(before)  # the hub let go of the half-open handshake
        await _still_serving(pool)


async def test_a_stalled_handshake_holds_up_no_one() -> None:
    queue: aioproc.Queue[int] = aioproc.Queue()
    hub = _hub_of(queue)
    stream, challenge = await _connect(hub)
    answer = _hub.digest(hub.key, challenge) + os.getpid().to_bytes(8, "little")
    await stream.send(answer[:20])  # half the answer, then nothing for a while
    # Meanwhile a pool starts, its worker connects and is served, twice over.
    async with aioproc.ProcessPool(1) as pool:
        await _still_serving(pool)
        await _still_serving(pool)
    # The slow peer was neither refused nor forgotten: its answer completes now.
    await stream.send(answer[20:])
    with anyio.fail_after(TIMEOUT):
        assert await stream.receive(1) == b"\x01"
    await stream.aclose()


async def test_a_silent_peer_is_dropped_after_the_handshake_timeout(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_hub, "_HANDSHAKE_TIMEOUT", 0.2)
    queue: aioproc.Queue[int] = aioproc.Queue()
    hub = _hub_of(queue)
    stream, _ = await _connect(hub)  # takes the challenge, never answers
    await _assert_closed_without_welcome(stream)
    assert "did not answer the challenge" in caplog.text
    await stream.aclose()
    async with aioproc.ProcessPool(1) as pool:
        await _still_serving(pool)


# --- after authentication: a legitimate child writes what no aioproc code would ----------

WRITES = {
    "garbage": (b"\x08\x00\x00\x00" + b"\xc1" * 8, "malformed frame"),
    "length far over MAX_FRAME": (b"\xff\xff\xff\xff", "frame length 4294967295 exceeds"),
    "length just over MAX_FRAME": (
        (_wire.MAX_FRAME + 1).to_bytes(4, "little"),
        f"frame length {_wire.MAX_FRAME + 1} exceeds the limit of {_wire.MAX_FRAME} bytes",
    ),
    "a worker's message (wrong type)": (_wire.encode(_wire.Ready(1)), "malformed frame"),
    "a reply sent to the hub": (
        _wire.encode(_wire.HubReply(1, 0, b"")),
        "a HubReply message sent to the hub",
    ),
    "a cancel that cannot be answered": (
        _wire.encode(_wire.HubCall(0, 0, _wire.OP_CANCEL, b"\xff" * 12)),
        "a cancel request of 12 bytes",
    ),
}


@pytest.mark.parametrize("case", list(WRITES))
async def test_child_writing_junk_loses_only_its_connection(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    junk, reason = WRITES[case]
    async with aioproc.ProcessPool(1) as pool:
        await _still_serving(pool, "warm-up")
        queue: aioproc.Queue[int] = aioproc.Queue()
        await queue.put(1)
        with caplog.at_level(logging.WARNING, logger="aioproc"):
            child: aioproc.Process[tuple[int, str, str]]
            child = aioproc.Process(hostile_tasks.write_raw, (queue, junk))
            async with child:
                # An oversized length prefix is refused at once: were the hub waiting for
                # its 4 GiB, the child's call after it would never be answered.
                with anyio.fail_after(TIMEOUT):
                    pid, error, message = await child.result()
            # The child's next call raised a clear error, naming why.
            assert error == "ClosedResourceError"
            assert "the aioproc hub dropped this process's connection" in message
            assert reason in message
            await _still_serving(pool)
        assert f"dropped the connection of process {pid}: " in caplog.text
        assert reason in caplog.text
        # The queue the child used is intact for everyone else.
        assert await queue.get() == 1


async def test_child_dies_mid_frame() -> None:
    async with aioproc.ProcessPool(1) as pool:
        await _still_serving(pool, "warm-up")
        queue: aioproc.Queue[int] = aioproc.Queue()
        before = _fds()
        # Half a frame, then the process ends: its connection goes, nothing is kept.
        child: aioproc.Process[None] = aioproc.Process(hostile_tasks.write_half_a_frame, (queue,))
        async with child:
            pass
        assert child.exitcode == 0
        await _fds_settle_to(before)
        await _still_serving(pool)
        assert queue.statistics().size == 0  # the partial frame was never an item


# --- typed channels fed the wrong shape by another process -------------------------------


class Point(msgspec.Struct):
    x: int
    y: int


async def test_typed_queue_fed_wrong_types_by_another_process() -> None:
    queue: aioproc.Queue[Point] = aioproc.Queue(type=Point)
    wrong: list[Any] = [{"x": "one", "y": 2}, {"x": 1}, [1, 2, 3], "point", None]
    async with aioproc.ProcessPool(1) as pool:
        with anyio.fail_after(TIMEOUT):
            await pool.apply(hostile_tasks.put_each, queue, [Point(1, 2), *wrong, Point(3, 4)])
            # Bytes that are not msgpack at all, or nest too deep for the decoder.
            await pool.apply(hostile_tasks.put_raw, queue, [b"\xc1", b"\x91" * 100_000 + b"\xc0"])
            await pool.apply(hostile_tasks.put_each, queue, [Point(5, 6)])
            assert await queue.get() == Point(1, 2)
            expected = [
                r"Expected `int`, got `str` - at `\$.x`",
                r"missing required field `y`",
                r"Expected `object`, got `array`",
                r"Expected `object`, got `str`",
                r"Expected `object`, got `None`",
                r"malformed message",
                r"malformed message|Expected `object`, got `array`",
            ]
            for pattern in expected[:5]:
                with pytest.raises(aioproc.ValidationError, match=pattern):
                    await queue.get()
            assert await queue.get() == Point(3, 4)
            for pattern in expected[5:]:
                with pytest.raises(aioproc.ValidationError, match=pattern):
                    await queue.get()
            assert await queue.get() == Point(5, 6)


async def test_any_typed_queue_refuses_a_nesting_bomb() -> None:
    queue: aioproc.Queue[dict[str, Any]] = aioproc.Queue(type=dict[str, Any])
    bomb = b"\x81\xa1a" * 100_000 + b"\xc0"  # {"a": {"a": ...}} 100,000 deep
    async with aioproc.ProcessPool(1) as pool:
        with anyio.fail_after(TIMEOUT):
            await pool.apply(hostile_tasks.put_raw, queue, [bomb])
            await pool.apply(hostile_tasks.put_each, queue, [{"a": 1}])
            with pytest.raises(aioproc.ValidationError, match="malformed message"):
                await queue.get()
            assert await queue.get() == {"a": 1}


async def test_typed_pipe_fed_wrong_types_by_another_process() -> None:
    mine, theirs = aioproc.Pipe(type=Point)
    async with aioproc.ProcessPool(1) as pool:
        with anyio.fail_after(TIMEOUT):
            await pool.apply(
                hostile_tasks.put_each, theirs, [{"x": 1, "y": [2]}, Point(7, 8), {"y": 1}]
            )
            with pytest.raises(aioproc.ValidationError, match=r"got `array` - at `\$.y`"):
                await mine.recv()
            assert await mine.recv() == Point(7, 8)
            with pytest.raises(aioproc.ValidationError, match="missing required field `x`"):
                await mine.recv()
            await theirs.send(Point(9, 9))  # and the pipe still works both ways
    theirs.close()
    assert await mine.recv() == Point(9, 9)


async def test_untyped_queue_fed_garbage_by_another_process() -> None:
    queue: aioproc.Queue[Any] = aioproc.Queue()
    async with aioproc.ProcessPool(1) as pool:
        with anyio.fail_after(TIMEOUT):
            await pool.apply(hostile_tasks.put_raw, queue, [b"not a pickle", b"\x80\x05"])
            await pool.apply(hostile_tasks.put_each, queue, [("fine", 1)])
            for _ in range(2):
                with pytest.raises(aioproc.SerializationError, match="cannot unpickle the item"):
                    await queue.get()
            assert await queue.get() == ("fine", 1)


# --- the typed-channel decoder, fuzzed ---------------------------------------------------

INTS = st.integers(-(2**63), 2**64 - 1)  # msgpack's range
FLOATS = st.floats(allow_nan=False)  # NaN != NaN would make equality meaningless


class Reading(msgspec.Struct, tag=True):
    sensor: str
    value: float
    note: str | None = None


class Alarm(msgspec.Struct, tag=True):
    sensor: str
    level: int


TYPES: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "Struct": (Point, st.builds(Point, INTS, INTS)),
    "list[int]": (list[int], st.lists(INTS)),
    "dict[str, float]": (dict[str, float], st.dictionaries(st.text(), FLOATS)),
    "int | None": (int | None, st.none() | INTS),
    "str | list[int]": (str | list[int], st.text() | st.lists(INTS)),
    "tuple[int, str, bytes]": (tuple[int, str, bytes], st.tuples(INTS, st.text(), st.binary())),
    "tagged union of Structs": (
        Reading | Alarm,
        st.builds(Reading, st.text(), FLOATS, st.none() | st.text())
        | st.builds(Alarm, st.text(), INTS),
    ),
    "dict[str, Any]": (
        dict[str, Any],
        st.dictionaries(st.text(), st.none() | st.booleans() | INTS | st.text() | st.binary()),
    ),
}

JUNK = st.recursive(
    st.none() | st.booleans() | INTS | FLOATS | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6) | INTS, inner, max_size=4)
        | st.fixed_dictionaries({"x": inner, "y": inner})  # near misses for Point
        | st.fixed_dictionaries({"type": st.sampled_from(["Reading", "Alarm"]), "sensor": inner})
    ),
    max_leaves=12,
)


def _same(got: Any, sent: Any) -> bool:
    """Did the decoder hand back what was sent (as the declared type sees it)?"""
    if isinstance(got, msgspec.Struct):
        if not isinstance(sent, dict):
            return False
        for field in msgspec.structs.fields(got):
            value = getattr(got, field.name)
            if field.encode_name in sent:
                if not _same(value, sent[field.encode_name]):
                    return False
            elif value != field.default:
                return False
        return True
    if isinstance(got, list | tuple):
        return (
            isinstance(sent, list | tuple)
            and len(got) == len(sent)
            and all(_same(a, b) for a, b in zip(got, sent, strict=True))
        )
    if isinstance(got, dict):
        return (
            isinstance(sent, dict)
            and got.keys() == sent.keys()
            and all(_same(got[k], sent[k]) for k in got)
        )
    if type(got) is float and type(sent) is int:
        # An int is a valid float, rounded to the nearest one: 2**53 + 1 arrives as 2**53.
        return got == float(sent)
    return type(got) is type(sent) and bool(got == sent)


def _check_junk(codec: _codec.ItemCodec, blob: bytes, sent: Any) -> None:
    try:
        got = codec.decode(blob)
    except aioproc.ValidationError:
        return
    assert _same(got, sent), f"{sent!r} decoded as {got!r}"


@pytest.mark.parametrize("name", list(TYPES))
def test_typed_decoder_round_trips_what_conforms(name: str) -> None:
    type_, values = TYPES[name]
    codec = _codec.ItemCodec(type_)

    @settings(max_examples=100, deadline=None)
    @given(values)
    def check(value: Any) -> None:
        assert codec.decode(codec.encode(value)) == value

    check()


@pytest.mark.parametrize("name", list(TYPES))
def test_typed_decoder_rejects_junk_cleanly(name: str) -> None:
    codec = _codec.ItemCodec(TYPES[name][0])

    @settings(max_examples=150, deadline=None)
    @given(JUNK)
    @example({"x": 2**53 + 1})  # a float field given an int that no float holds exactly
    def check(junk: Any) -> None:
        _check_junk(codec, msgspec.msgpack.encode(junk), junk)

    check()


@pytest.mark.parametrize("name", list(TYPES))
def test_typed_decoder_survives_arbitrary_bytes(name: str) -> None:
    codec = _codec.ItemCodec(TYPES[name][0])

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=64))
    def check(blob: bytes) -> None:
        try:
            codec.decode(blob)
        except aioproc.ValidationError:
            pass

    check()


def test_queues_use_the_fuzzed_decoder() -> None:
    """The decoder above is the one a typed Queue and a typed Pipe decode with."""
    queue: aioproc.Queue[Point] = aioproc.Queue(type=Point)
    a, b = aioproc.Pipe(type=Point)
    try:
        for channel in (queue, a, b):
            assert isinstance(channel._codec, _codec.ItemCodec)
            assert channel._codec.type is Point
    finally:
        a.close()
        b.close()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_hub_frame_reader_fails_only_with_serialization_error(data: bytes, cuts: list[int]) -> None:
    """Whatever a peer writes, the hub's reader yields hub messages or SerializationError."""
    reader = _wire.FrameReader(decoder=_wire.hub_decoder)
    pos = 0
    try:
        while pos < len(data):
            step = cuts[pos % len(cuts)]
            for msg in reader.feed(data[pos : pos + step]):
                assert type(msg) in (_wire.HubCall, _wire.HubReply)
            pos += step
    except aioproc.SerializationError:
        pass
    assert reader.pending() <= len(data)


def test_an_unencodable_frame_leaves_the_channel_intact() -> None:
    """A frame that fails to encode (an id out of msgpack's range) raises a clear error
    and leaves nothing behind: a stray length prefix would garble every later frame."""
    buf = bytearray(_wire.encode(_wire.HubReply(1, 0, b"before")))
    with pytest.raises(aioproc.SerializationError, match="cannot encode a HubReply frame"):
        _wire.encode_into(_wire.HubReply(2**64, 0, b""), buf)
    _wire.encode_into(_wire.HubReply(2, 0, b"after"), buf)
    reader = _wire.FrameReader(decoder=_wire.hub_decoder)
    assert reader.feed(bytes(buf)) == [
        _wire.HubReply(1, 0, b"before"),
        _wire.HubReply(2, 0, b"after"),
    ]


def test_typed_put_of_an_unencodable_string_is_a_serialization_error() -> None:
    queue: aioproc.Queue[str] = aioproc.Queue(type=str)
    with pytest.raises(aioproc.SerializationError, match="surrogates not allowed"):
        queue.put_nowait("lone \ud800 surrogate")
    queue.put_nowait("fine")
    assert queue.get_nowait() == "fine"
