"""Logging set-up, done once by the entry point: text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Hashable

__all__ = [
    "ClosedSocketRaceFilter",
    "JsonFormatter",
    "RepeatFilter",
    "Throttle",
    "configure_logging",
]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...extra}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class Throttle:
    """Per key, let one event through per interval and count the ones held back.

    >>> now = [0.0]
    >>> throttle = Throttle(10, clock=lambda: now[0])
    >>> throttle.allow("a"), throttle.allow("a"), throttle.allow("b")
    (0, None, 0)
    >>> now[0] = 11; throttle.allow("a")
    1
    """

    def __init__(self, interval_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.interval_seconds, self._clock = interval_seconds, clock
        self._last: dict[Hashable, tuple[float, int]] = {}

    def allow(self, key: Hashable) -> int | None:
        """None to hold the event back; else how many were held back since the last one."""
        now = self._clock()
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self.interval_seconds:
            self._last[key] = (last, held + 1)
            return None
        self._last[key] = (now, 0)
        return held


class RepeatFilter(logging.Filter):
    """Of the loggers under ``prefix``, let one record per message template through per interval.

    The Kafka client logs every failed reconnect during an outage; the worker
    says once that the broker is unreachable. The next record let through says
    how many were held back.
    """

    def __init__(
        self,
        prefix: str = "kafka",
        interval_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self._throttle = Throttle(interval_seconds, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefix):
            return True
        held = self._throttle.allow((record.name, record.msg))
        if held is None:
            return False
        if held:
            seconds = self._throttle.interval_seconds
            record.msg = f"{record.msg} [{held} like this in the last {seconds:.0f}s]"
        return True


class ClosedSocketRaceFilter(logging.Filter):
    """Drop kafka-python 3's traceback for a read or write on a socket it has just closed.

    Its transport's ``_close`` sets the socket to None before unregistering it from the IO
    thread's selector, so a read event already selected then calls ``None.recv`` and logs
    "Error receiving network data closing socket" with a traceback, for a connection that is
    closed already (seen when the worker closes its clients on SIGTERM, after its final
    commit). Nothing is lost; any other error from the client still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kafka.net") or not record.exc_info:
            return True
        error = record.exc_info[1]
        return not (
            isinstance(error, AttributeError)
            and str(error)
            in (
                "'NoneType' object has no attribute 'recv'",
                "'NoneType' object has no attribute 'send'",
            )
        )


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after set-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python is chatty at INFO about every connection; keep its warnings, and only
    # one of each kind per 30 s during an outage (unless debugging).
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if level != "DEBUG":
        handler.addFilter(ClosedSocketRaceFilter())
        handler.addFilter(RepeatFilter("kafka"))
