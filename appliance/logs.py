"""Logging to stdout (journald picks it up), with context fields, and the terminal's live status line."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

_CONTEXT = ("turn_id", "brain", "service", "stage", "ms")


class ContextFormatter(logging.Formatter):
    """Appends context fields given with ``extra=`` as key=value, one fact per line."""

    def __init__(self, journal: bool) -> None:
        fmt = "%(levelname)s %(name)s: %(message)s" if journal else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        super().__init__(fmt, datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{key}={getattr(record, key)}" for key in _CONTEXT if hasattr(record, key)]
        return f"{text} [{' '.join(fields)}]" if fields else text


class StatusAwareHandler(logging.StreamHandler):
    """Clears the live status line before a log line and redraws it after, so the two never mix."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.status = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if self.status:  # clear the live line, write the log line, draw the live line again
                self.stream.write(f"\r\x1b[K{message}\n{self.status}")
            else:
                self.stream.write(f"{message}\n")
            self.flush()
        except Exception:  # noqa: BLE001  # logging's own contract: a handler reports its failure, never raises
            self.handleError(record)

    def width(self) -> int | None:
        """The terminal's width in columns now (it may have been resized), or None when not a terminal."""
        try:
            if not self.stream.isatty():
                return None
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return None

    def set_status(self, text: str) -> None:
        if not text and not self.status:
            return  # nothing drawn, nothing to clear: a pipe or a too narrow terminal stays plain
        self.status = text
        self.stream.write(f"\r\x1b[K{text}")
        self.flush()


def setup_logging(
    level: str = "INFO", status_line: bool = False, stream: TextIO | None = None
) -> StatusAwareHandler | None:

    stream = stream or sys.stdout
    journal = bool(os.environ.get("JOURNAL_STREAM")) or bool(os.environ.get("INVOCATION_ID"))
    handler: logging.Handler = StatusAwareHandler(stream) if status_line else logging.StreamHandler(stream)
    handler.setFormatter(ContextFormatter(journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "anthropic", "hpack", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return handler if isinstance(handler, StatusAwareHandler) else None
