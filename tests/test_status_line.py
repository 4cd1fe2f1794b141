"""The live status line in real (pseudo-)terminals of a set width, read back through a terminal emulator."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import struct
import termios
from collections.abc import Iterator

import pyte
import pytest

from appliance.bus import EventBus
from appliance.events import State
from appliance.logs import ContextFormatter, StatusAwareHandler
from appliance.status_line import StatusLine, cells, shorten

SAID = (
    "[face:sorrow] I'm not connected to the internet right now, so I can't answer. "
    "Please check the cable and the Wi-Fi settings, then ask me again."
)
HEARD = "what is the weather going to be like tomorrow in the mountains near Kyoto"


class Terminal:
    """A pty with a set window size; what the program writes is replayed into pyte's screen."""

    def __init__(self, columns: int, rows: int = 24) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        os.set_blocking(self.master, False)
        self.stream = open(slave, "w", encoding="utf-8", closefd=True)
        self.screen = pyte.Screen(columns, rows)
        self.feed = pyte.ByteStream(self.screen)

    def pump(self) -> None:
        self.stream.flush()
        while True:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                return
            if not data:
                return
            self.feed.feed(data)

    def rows(self) -> list[str]:
        self.pump()
        return [row.rstrip() for row in self.screen.display]

    def close(self) -> None:
        self.stream.close()
        os.close(self.master)


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("test.status-line")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger
    logger.handlers.clear()


def _attach(stream: io.TextIOBase, logger: logging.Logger) -> StatusLine:
    handler = StatusAwareHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(ContextFormatter(journal=True))
    logger.addHandler(handler)
    plain = logging.getLogger("appliance.status_line")
    plain.addHandler(handler)
    plain.setLevel(logging.INFO)
    return StatusLine(EventBus(), handler)


def _a_few_turns(status: StatusLine, logger: logging.Logger, term: Terminal | None = None) -> None:
    for turn in range(3):
        status.state, status.brain, status.heard, status.said = State.LISTENING, "offline", "", ""
        status._draw(state_changed=True)
        status.heard = HEARD
        status.state = State.THINKING
        status._draw(state_changed=True)
        logger.info("turn %d heard", turn)
        status.state, status.face, status.led = State.SPEAKING, "sorrow", "#00ff40"
        status.said = SAID
        status._draw(state_changed=True)
        logger.info("turn %d finished", turn)
        status._draw(state_changed=False)
        if term is not None:
            term.pump()


@pytest.mark.parametrize("columns", [60, 80])
def test_the_status_line_fits_the_terminal_and_never_stacks(columns: int, logger: logging.Logger) -> None:
    term = Terminal(columns)
    try:
        status = _attach(term.stream, logger)
        _a_few_turns(status, logger, term)
        rows = [row for row in term.rows() if row]
    finally:
        logging.getLogger("appliance.status_line").handlers.clear()
        term.close()
    live = [row for row in rows if "│" in row]
    assert len(live) == 1, rows  # one status line, no stale wrapped copies above it
    line = live[0]
    assert line == rows[-1]  # below the log lines
    assert line.startswith("▶ SPEAKING")
    assert cells(line) < columns
    assert "[face:" not in line
    assert 'said "' in line and line.endswith('…"')  # shortened with an ellipsis...
    said = line.split('said "')[1][:-2]
    assert SAID.replace("[face:sorrow] ", "").startswith(said)
    assert SAID.replace("[face:sorrow] ", "")[len(said)] == " "  # ...at a word boundary
    assert [row for row in rows if row.startswith("INFO")] == [
        f"INFO test.status-line: turn {n} {what}" for n in range(3) for what in ("heard", "finished")
    ]


def test_the_said_text_gives_way_before_the_heard_one() -> None:
    status = StatusLine(EventBus(), StatusAwareHandler(io.StringIO()))
    status.state, status.heard, status.said = State.SPEAKING, "what time is it", SAID
    line = status.render(120)
    assert line is not None and cells(line) < 120
    assert 'heard "what time is it"' in line
    assert "said \"I'm not connected" in line and line.endswith('…"')


def test_a_narrow_terminal_gets_plain_log_lines(logger: logging.Logger) -> None:
    term = Terminal(30)
    try:
        status = _attach(term.stream, logger)
        _a_few_turns(status, logger, term)
        rows = [row for row in term.rows() if row]
    finally:
        logging.getLogger("appliance.status_line").handlers.clear()
        term.close()
    assert not any("│" in row for row in rows)
    text = "".join(rows)  # 30 columns: the log lines wrap, as log lines may
    assert "INFO appliance.status_line: state speaking (face sorrow, brain offline)" in text


def test_not_a_terminal_gets_plain_log_lines_and_no_escape_codes(logger: logging.Logger) -> None:
    out = io.StringIO()
    status = _attach(out, logger)
    try:
        _a_few_turns(status, logger)
    finally:
        logging.getLogger("appliance.status_line").handlers.clear()
    text = out.getvalue()
    assert "│" not in text and "\x1b" not in text
    lines = [line.strip("\r") for line in text.splitlines()]
    assert lines.count("INFO appliance.status_line: state speaking (face sorrow, brain offline)") == 3  # one a turn
    assert "INFO test.status-line: turn 2 finished" in lines


def test_shorten_cuts_at_a_word_and_counts_wide_characters() -> None:
    assert shorten("hello there world", 20) == "hello there world"
    assert shorten("hello there world", 14) == "hello there…"
    assert shorten("hello", 3) is None
    short = shorten("こんにちは、今日はいい天気ですね", 11)
    assert short is not None and cells(short) <= 11 and short.endswith("…")
