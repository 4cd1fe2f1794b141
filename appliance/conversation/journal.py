"""The write-ahead record of what was heard and said: nothing the robot reported as done is lost to a crash.

One append-only JSON-lines file per conversation (``<conversation_id>.jsonl``). A turn writes a ``begin``
record (what the user said, or how long they spoke before it is transcribed) that is on disk, fsynced,
before the brain is asked; ``heard`` when the transcript comes; ``said`` for each sentence as it starts
playing; and ``end`` (outcome, the brain that answered, timings), fsynced before the turn is reported
finished. A power cut can tear only the last line, which readers skip; a turn with no ``end`` was cut off
by the crash and reads back as such.

Appends are small and go through one writer task in order, each in a worker thread, so the event loop never
waits on the SD card. Every caller waits until its record is written (the page cache is enough against a
crash of the process); ``begin`` and ``end`` also wait for the fsync that a power cut needs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from appliance.files import fsync_dir

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"
_OPEN_FILES = 4  # conversations whose file stays open for appends


@dataclass(eq=False)
class _Append:
    conversation_id: str
    record: dict[str, Any]
    durable: bool
    done: trio.Event = field(default_factory=trio.Event)
    error: OSError | None = None


class TurnJournal:
    name = "journal"

    def __init__(self, directory: Path, queue: int = 256) -> None:
        self.directory = directory
        self._send, self._receive = trio.open_memory_channel[_Append](queue)
        self._files: dict[str, int] = {}  # conversation id -> fd opened for appending, most recent last
        self.failed = 0
        self._stopped = False  # the writer task is gone (shutdown): appends are written by the caller
        self._lock = threading.Lock()

    # --- what a turn writes ------------------------------------------------------------------------------

    async def begin(
        self,
        conversation_id: str,
        turn_id: str,
        *,
        brain: str,
        source: str,
        heard: str | None,
        audio_seconds: float | None,
        announce: bool = False,
    ) -> None:
        """Durable before it returns: the brain is asked only once the user's words are safe."""
        record = {
            "t": "begin",
            "turn_id": turn_id,
            "at": time.time(),
            "brain": brain,
            "source": source,
            "heard": heard,
            "audio_seconds": audio_seconds,
            "announce": announce,
        }
        await self._write(conversation_id, record, durable=True)

    async def heard(self, conversation_id: str, turn_id: str, text: str) -> None:
        await self._write(conversation_id, {"t": "heard", "turn_id": turn_id, "text": text}, durable=False)

    async def said(self, conversation_id: str, turn_id: str, text: str) -> None:
        """A sentence starts playing: written (a crash of the process cannot lose it), not fsynced."""
        await self._write(conversation_id, {"t": "said", "turn_id": turn_id, "text": text}, durable=False)

    async def cut(self, conversation_id: str, turn_id: str, heard: str) -> None:
        """The last sentence broke off: only ``heard`` of it was played (empty: none of it)."""
        await self._write(conversation_id, {"t": "cut", "turn_id": turn_id, "text": heard}, durable=False)

    async def end(self, conversation_id: str, turn_id: str, **fields: Any) -> None:
        """Durable before it returns: the turn is reported finished only after this."""
        await self._write(conversation_id, {"t": "end", "turn_id": turn_id, "at": time.time(), **fields}, durable=True)

    # --- the writer ----------------------------------------------------------------------------------------

    async def _write(self, conversation_id: str, record: dict[str, Any], *, durable: bool) -> None:
        append = _Append(conversation_id, record, durable)
        if self._stopped:
            # Shutting down: the turn being interrupted by it still records its end (its caller is shielded).
            await trio.to_thread.run_sync(self._append_reporting, append)
            append.done.set()
        else:
            await self._send.send(append)
            await append.done.wait()
        if append.error is not None:
            # The turn goes on (the user must still be answered); the history has a gap, and says so in the log.
            log.error("history journal: cannot write %s: %s", self.directory, append.error)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = False
        task_status.started()
        try:
            async for append in self._receive:
                try:
                    await trio.to_thread.run_sync(self._append_reporting, append)
                finally:
                    append.done.set()
        finally:
            # Cancelled (shutdown, or a restart): what is queued is written now, in order, and later appends are
            # written by their callers; no await in here, so nothing can slip in between.
            self._stopped = True
            while True:
                try:
                    queued = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._append_reporting(queued)
                queued.done.set()
            with self._lock:
                for fd in self._files.values():
                    os.close(fd)
                self._files.clear()

    def _append_reporting(self, append: _Append) -> None:
        """In a worker thread (or the loop, at shutdown); the caller sets ``done`` on the Trio side."""
        try:
            with self._lock:  # after shutdown, callers' threads may append at the same time
                self._append(append)
        except OSError as exc:
            self.failed += 1
            append.error = exc

    def _append(self, append: _Append) -> None:
        fd = self._file(append.conversation_id)
        line = json.dumps(append.record, ensure_ascii=False, separators=(",", ":")) + "\n"
        os.write(fd, line.encode("utf-8"))
        if append.durable:
            os.fsync(fd)

    def _file(self, conversation_id: str) -> int:
        fd = self._files.pop(conversation_id, None)
        if fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = journal_path(self.directory, conversation_id)
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if new:  # the file's name must survive a power cut too, not only its bytes
                fsync_dir(self.directory)
            while len(self._files) >= _OPEN_FILES:
                os.close(self._files.pop(next(iter(self._files))))
        self._files[conversation_id] = fd
        return fd


def journal_path(directory: Path, conversation_id: str) -> Path:
    return directory / f"{conversation_id}{SUFFIX}"


def read_turns(lines: Iterable[str]) -> tuple[list[dict[str, Any]], float | None, float | None]:
    """The turns a journal holds, as the history API shows them, with the first and last record's time.

    A line that does not parse (the one a power cut tore) is skipped; a turn with no ``end`` record was cut
    off by a crash: it reads back with outcome ``cut off`` and whatever was said before it.
    """
    turns: dict[str, dict[str, Any]] = {}
    first: float | None = None
    last: float | None = None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("turn_id"), str):
            continue
        at = record.get("at")
        if isinstance(at, int | float):
            first = at if first is None else first
            last = at
        if record.get("t") == "begin":
            turns[record["turn_id"]] = _begun(record)
        elif record["turn_id"] in turns:
            _apply(turns[record["turn_id"]], record)
    shown = []
    for turn in turns.values():
        said = turn.pop("said")
        if not turn["spoken"]:
            turn["spoken"] = " ".join(said)
        if turn["heard"] or turn["spoken"] or turn["outcome"] == "cut off":
            shown.append(turn)
    return shown, first, last


def _begun(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "turn_id": record["turn_id"],
        "at": record.get("at"),
        "brain": record.get("brain"),
        "heard": record.get("heard"),
        "audio_seconds": record.get("audio_seconds"),
        "source": record.get("source"),
        "said": [],
        "spoken": "",
        "outcome": "cut off",
        "error": None,
        "timings": None,
    }


def _apply(turn: dict[str, Any], record: dict[str, Any]) -> None:
    """One later record of a begun turn: what was heard, said, cut short, and how it ended."""
    kind = record.get("t")
    text = record.get("text")
    if kind == "heard" and isinstance(text, str):
        turn["heard"] = text
    elif kind == "said" and isinstance(text, str):
        turn["said"].append(text)
    elif kind == "cut" and turn["said"] and isinstance(text, str):
        turn["said"].pop()
        if text:
            turn["said"].append(text)
    elif kind == "end":
        for key in ("outcome", "brain", "error", "timings", "spoken"):
            if key in record:
                turn[key] = record[key]
        if record.get("heard") is not None:
            turn["heard"] = record["heard"]
