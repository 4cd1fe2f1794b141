"""The live one-line status in the terminal: state, LED colour, face, what was heard and said.

The line is fitted to the terminal's width each time it is drawn: a line wider than the terminal wraps, and
the next ``\\r`` redraw then only clears its last row, which leaves stale copies stacked above. What was said
is shortened first (at a word boundary, with an ellipsis), then what was heard, then the fixed fields are
compacted. When the terminal is too narrow for even that, or the output is not a terminal, the status is
not drawn at all; state changes become plain log lines instead.
"""

from __future__ import annotations

import logging
import re
import unicodedata

import trio

from appliance.bus import EventBus
from appliance.conversation.tags import extract_tags
from appliance.events import (
    FaceChanged,
    Heard,
    LedChanged,
    ServiceStatus,
    State,
    StateChanged,
    TurnFinished,
    TurnStarted,
)
from appliance.logs import StatusAwareHandler

log = logging.getLogger(__name__)

_ICON = {
    State.IDLE: "·",
    State.LISTENING: "◉",
    State.THINKING: "…",
    State.SPEAKING: "▶",
    State.MUTED: "⊘",
    State.ERROR: "!",
}
SEPARATOR = " │ "
MIN_WIDTH = 40  # narrower than this, the status becomes plain log lines
MIN_TEXT = 8  # a quoted text shorter than this says nothing; drop it instead
GOOD_TEXT = 20  # worth compacting the other fields for
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cells(text: str) -> int:
    """Terminal columns ``text`` takes: colour codes take none, wide (CJK) characters two."""
    plain = _ANSI.sub("", text)
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in plain)


def shorten(text: str, room: int, least: int = 0) -> str | None:
    """``text`` cut to ``room`` columns at a word boundary with an ellipsis; None if it cannot be kept."""
    if cells(text) <= room:
        return text
    if room < max(least, MIN_TEXT):
        return None
    cut, used = "", 0
    for ch in text:
        width = cells(ch)
        if used + width > room - 1:  # one column for the ellipsis
            break
        cut += ch
        used += width
    space = cut.rfind(" ")
    if space >= len(cut) // 2:  # a word boundary not too far back; else cut mid-word (long CJK runs)
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


def _swatch(colour: str) -> str:
    r, g, b = int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
    return f"\x1b[38;2;{r};{g};{b}m●\x1b[0m" if colour != "#000000" else "○"


class StatusLine:
    name = "status-line"

    def __init__(self, bus: EventBus, handler: StatusAwareHandler) -> None:
        self.bus = bus
        self.handler = handler
        self.state = State.IDLE
        self.led = "#000000"
        self.face = "neutral"
        self.brain = "-"
        self.heard = ""
        self.said = ""
        self.failing: set[str] = set()
        self._logged = ""

    def _fixed(self, compact: int) -> list[str]:
        """The always-shown fields; ``compact`` 0 = in full, 1 = shorter, 2 = state and face only."""
        state = self.state.value.upper()
        if compact == 0:
            parts = [
                f"{_ICON[self.state]} {state:9}",
                f"LED {_swatch(self.led)} {self.led}",
                f"face {self.face:9}",
                f"brain {self.brain}",
            ]
        elif compact == 1:
            parts = [f"{_ICON[self.state]} {state}", _swatch(self.led), f"face {self.face}", self.brain]
        else:
            parts = [f"{_ICON[self.state]} {state}", self.face]
        if self.failing and compact < 2:
            parts.append("down: " + ",".join(sorted(self.failing)))
        return parts

    def render(self, width: int | None = None) -> str | None:
        """The status line fitted into ``width`` columns (None: no limit); None when it cannot fit."""
        heard = extract_tags(self.heard)[0]
        said = extract_tags(self.said)[0]
        if width is None:
            return self._join(self._fixed(0), heard[:40], said[:40])
        limit = width - 1  # never the last column: some terminals wrap there
        # Rather a shorter LED/brain field than a said text cut to a word or two: first ask for texts of at
        # least GOOD_TEXT columns, compacting the fixed fields if needed, and only then settle for less.
        for least in (GOOD_TEXT, MIN_TEXT):
            for compact in (0, 1, 2):
                fixed = self._fixed(compact)
                base = cells(SEPARATOR.join(fixed))
                for keep_heard in (True, False):
                    line = self._fit(fixed, heard if keep_heard else "", said, limit - base, least)
                    if line is not None:
                        return line
        return None

    def _fit(self, fixed: list[str], heard: str, said: str, room: int, least: int) -> str | None:
        # Each quoted text costs its label, two quotes and a separator on top of its own columns.
        heard_cost = cells(SEPARATOR) + len('heard ""') if heard else 0
        said_cost = cells(SEPARATOR) + len('said ""') if said else 0
        if room < heard_cost + said_cost:
            return None
        room -= heard_cost + said_cost
        if heard and said:
            # What was said gives way first: it is shortened while what was heard stays whole, and only
            # when that leaves too little are both shortened, what was heard to half of the room.
            if cells(heard) + min(least, cells(said)) <= room:
                short_heard: str | None = heard
            else:
                short_heard = shorten(heard, room // 2, least)
            short_said = shorten(said, room - cells(short_heard), least) if short_heard is not None else None
            if short_heard is None or short_said is None:
                return None
            return self._join(fixed, short_heard, short_said)
        text = heard or said
        short = shorten(text, room, least) if text else ""
        if short is None:
            return None
        return self._join(fixed, short if heard else "", short if said else "")

    @staticmethod
    def _join(fixed: list[str], heard: str, said: str) -> str:
        parts = list(fixed)
        if heard:
            parts.append(f'heard "{heard}"')
        if said:
            parts.append(f'said "{said}"')
        return SEPARATOR.join(parts)

    def _draw(self, state_changed: bool) -> None:
        width = self.handler.width()
        line = self.render(width) if width is not None and width >= MIN_WIDTH else None
        if line is not None:
            self.handler.set_status(line)
            return
        # Not a terminal, or too narrow: no live line (it would wrap and stack); say what changed plainly.
        self.handler.set_status("")
        if state_changed:
            plain = f"state {self.state.value} (face {self.face}, brain {self.brain})"
            if plain != self._logged:
                self._logged = plain
                log.info("%s", plain)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.bus.subscribe(
            StateChanged, LedChanged, FaceChanged, Heard, TurnStarted, TurnFinished, ServiceStatus, name=self.name
        ) as sub:
            task_status.started()
            self._draw(state_changed=True)
            async for event in sub:
                if isinstance(event, StateChanged):
                    self.state = event.new
                elif isinstance(event, LedChanged):
                    self.led = event.colour
                elif isinstance(event, FaceChanged):
                    self.face = event.name
                elif isinstance(event, TurnStarted):
                    self.brain, self.heard, self.said = event.brain, "", ""
                elif isinstance(event, Heard):
                    self.heard = event.text
                elif isinstance(event, TurnFinished):
                    self.said = event.spoken
                elif isinstance(event, ServiceStatus):
                    if event.status in ("running", "starting", "learning"):  # learning: the noise floor (listening)
                        self.failing.discard(event.service)
                    else:
                        self.failing.add(event.service)
                self._draw(state_changed=isinstance(event, StateChanged))
