"""What workers print and log, replayed in the parent.

A worker's ``print()``, stderr and logging records travel as ``Output``/``Log`` messages on
its result pipe (see ``_worker.py``); here they reach the parent's ``sys.stdout``,
``sys.stderr`` and loggers, as if the worker's code had run in the parent.
"""

from __future__ import annotations

import codecs
import logging
import sys

from . import _codec, _wire

__all__ = ("OutputRelay", "emit_log", "lowest_log_level")


class OutputRelay:
    """Writes one worker's output to the parent's streams.

    Invariant: one incremental UTF-8 decoder per stream, so a character split across two
    messages is written whole.
    """

    __slots__ = ("_decoders",)

    def __init__(self) -> None:
        self._decoders: dict[int, codecs.IncrementalDecoder] = {}

    def write(self, msg: _wire.Output) -> None:
        decoder = self._decoders.get(msg.fd)
        if decoder is None:
            decoder = self._decoders[msg.fd] = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(msg.data)
        stream = sys.stdout if msg.fd == 1 else sys.stderr
        if stream is not None and text:
            # sys.stdout may be any object the user put there, closed or broken: the
            # worker's output is lost then, its task is not.
            try:
                stream.write(text)
            except Exception:  # pragma: no cover
                pass


def lowest_log_level() -> int:
    """The most verbose level any configured logger wants: workers send at least that."""
    level = logging.getLogger().getEffectiveLevel()
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and logger.level:
            level = min(level, logger.level)
    return level


def emit_log(blob: bytes) -> None:
    """Hand a worker's log record to the parent's logger of the same name."""
    try:
        record = logging.makeLogRecord(_codec.loads(blob))
    except BaseException:  # pragma: no cover - user objects in the record's args unpickled
        return
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
