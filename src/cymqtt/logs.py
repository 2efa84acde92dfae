"""Where the broker's log goes (`log_dest`) and at what level (`log_level`), as mosquitto's
`log_dest` does: stderr, stdout, a file, syslog, or nowhere.

    logs.setup(config)            # the `cymqtt` command, once, before the broker starts
    logs.set_level("debug")       # Broker.reload: a new level for the "cymqtt" loggers

A leaf module (stdlib only): every layer may import it. Embedders keep their own logging set-up
and never call `setup`.
"""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import time

__all__ = ["FORMAT", "LineFormatter", "make_handler", "set_level", "setup"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SYSLOG_SOCKET = "/dev/log"

_installed: logging.Handler | None = None


class LineFormatter(logging.Formatter):
    """logging.Formatter with the same output, formatting the date and time of a second once:
    the broker logs a line per connect and disconnect by default (`connection_messages`), and
    localtime() + strftime() were most of a line's cost."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""
        self._uses_time = super().usesTime()

    def usesTime(self) -> bool:           # (asked for every record; the format never changes)
        return self._uses_time

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            # The stamp of a whole second, as Formatter.formatTime makes it (default_time_format,
            # in self.converter's time zone); the milliseconds go on per record below.
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return self.default_msec_format % (self._stamp, record.msecs)


def make_handler(dest: str) -> logging.Handler:
    """The handler for a `log_dest` value. Raises OSError when a file cannot be opened."""
    if dest == "stdout":
        return logging.StreamHandler(sys.stdout)
    if dest == "none":
        return logging.NullHandler()
    if dest.startswith("file:"):
        return logging.FileHandler(dest[5:], encoding="utf-8")
    if dest == "syslog":
        if os.path.exists(SYSLOG_SOCKET):
            handler: logging.Handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
        else:   # no local syslog daemon socket: the syslog port on this machine
            handler = logging.handlers.SysLogHandler()
        handler.setFormatter(LineFormatter("cymqtt[%(process)d]: %(levelname)s "
                                        "%(name)s: %(message)s"))
        return handler
    return logging.StreamHandler(sys.stderr)


def setup(log_level: str, log_dest: str = "stderr") -> None:
    """Send the root logger to `log_dest` at `log_level` (replacing what an earlier call
    installed)."""
    global _installed
    handler = make_handler(log_dest)
    if handler.formatter is None:
        handler.setFormatter(LineFormatter(FORMAT))
    # No format of ours names the caller's file, line or function, a thread or a
    # multiprocessing process name: do not look them up for every record (the logging
    # HOWTO's "Optimization"; findCaller walks the stack). The process id only where the
    # format shows it (syslog's).
    logging._srcfile = None         # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = "%(process)" in (getattr(handler.formatter, "_fmt", None) or "")
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
        _installed.close()
    root.addHandler(handler)
    _installed = handler
    root.setLevel(getattr(logging, log_level.upper()))
    set_level(log_level)


def set_level(log_level: str) -> None:
    """The level of the "cymqtt" loggers (the broker's own), e.g. on a reload; their records
    reach the root logger's handlers whatever the root logger's own level."""
    logging.getLogger("cymqtt").setLevel(getattr(logging, log_level.upper()))
