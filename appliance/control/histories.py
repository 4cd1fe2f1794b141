"""What the robot heard and said, kept per conversation on disk so it can be read back through the API.

Built from the bus alone: ``TurnStarted`` (brain), ``Heard`` (what was understood) and ``TurnFinished``
(what was spoken, outcome, timings). The conversation a turn belongs to is the one the conversation's
short-term history holds when the turn ends. One JSON file per conversation, each write atomic.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from appliance.bus import EventBus
from appliance.control.files import atomic_write
from appliance.events import Heard, TurnFinished, TurnStarted

log = logging.getLogger(__name__)

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID = re.compile(ID_PATTERN)


class HistoryStore:
    """Conversations as JSON files in ``directory``; at most ``limit`` are kept, the oldest go first."""

    def __init__(self, directory: Path, limit: int = 200) -> None:
        self.directory = directory
        self.limit = limit
        self._cache: dict[str, dict[str, Any]] = {}
        self._loaded = False
        self._lock = trio.Lock()

    def _path(self, conversation_id: str) -> Path:
        if not _ID.match(conversation_id):
            raise KeyError(conversation_id)
        return self.directory / f"{conversation_id}.json"

    def _load_all(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.directory.is_dir():
            return
        for file in self.directory.glob("*.json"):
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or data.get("id") != file.stem or not isinstance(data.get("turns"), list):
                    raise ValueError("not a conversation record")
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable history %s: %s", file, exc)
                continue
            self._cache[file.stem] = data

    async def load(self) -> None:
        async with self._lock:
            await trio.to_thread.run_sync(self._load_all)

    def summaries(self) -> list[dict[str, Any]]:
        rows = []
        for data in self._cache.values():
            turns = data["turns"]
            first = next((t.get("heard") for t in turns if t.get("heard")), None)
            rows.append(
                {
                    "id": data["id"],
                    "started_at": data.get("started_at"),
                    "updated_at": data.get("updated_at"),
                    "turns": len(turns),
                    "preview": (first or "")[:80],
                }
            )
        rows.sort(key=lambda row: row["updated_at"] or 0, reverse=True)
        return rows

    def get(self, conversation_id: str) -> dict[str, Any] | None:
        return self._cache.get(conversation_id)

    async def add_turn(self, conversation_id: str, turn: dict[str, Any]) -> None:
        async with self._lock:
            now = time.time()
            old = self._cache.get(conversation_id)
            data = {"id": conversation_id, "started_at": now, "turns": []} if old is None else dict(old)
            data["turns"] = [*data["turns"], turn]
            data["updated_at"] = now
            payload = json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")
            path = self._path(conversation_id)
            # Disk first, then memory: what the API shows is always what a restart would read back.
            await trio.to_thread.run_sync(lambda: atomic_write(path, payload, mode=0o600))
            self._cache[conversation_id] = data
            await self._prune()

    async def delete(self, conversation_id: str) -> bool:
        async with self._lock:
            if conversation_id not in self._cache:
                return False
            path = self._path(conversation_id)
            await trio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))
            self._cache.pop(conversation_id, None)
            return True

    async def _prune(self) -> None:
        if len(self._cache) <= self.limit:
            return
        oldest = sorted(self._cache.values(), key=lambda d: d.get("updated_at") or 0)
        for data in oldest[: len(self._cache) - self.limit]:
            path = self._path(data["id"])
            await trio.to_thread.run_sync(lambda p=path: p.unlink(missing_ok=True))
            self._cache.pop(data["id"], None)

    async def record(
        self,
        bus: EventBus,
        conversation_id: Callable[[], str],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow the bus and store each finished turn that heard or said something."""
        await self.load()
        brains: dict[str, str] = {}
        heard: dict[str, str] = {}
        with bus.subscribe(TurnStarted, Heard, TurnFinished, name="control-histories", size=512) as sub:
            task_status.started()
            async for event in sub:
                if isinstance(event, TurnStarted):
                    brains[event.turn_id] = event.brain
                elif isinstance(event, Heard):
                    heard[event.turn_id] = event.text
                elif isinstance(event, TurnFinished):
                    text = heard.pop(event.turn_id, None)
                    brain = brains.pop(event.turn_id, None)
                    if not text and not event.spoken:
                        continue
                    turn = {
                        "turn_id": event.turn_id,
                        "at": time.time(),
                        "brain": brain,
                        "heard": text,
                        "spoken": event.spoken,
                        "outcome": event.outcome,
                        "error": event.error,
                        "timings": asdict(event.timings),
                    }
                    try:
                        await self.add_turn(conversation_id(), turn)
                    except OSError as exc:
                        log.error("cannot store history in %s: %s", self.directory, exc)
