"""What the robot heard and said, per conversation, read back from the write-ahead journal for the API.

The conversation service writes every turn ahead into one JSON-lines journal per conversation
(:mod:`appliance.conversation.journal`) and reports a turn finished only once its record is on disk; this
store reads those files (and the whole-file JSON records of earlier versions), refreshes a conversation when
one of its turns finishes, and keeps at most ``limit`` conversations, the oldest going first.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from appliance.bus import EventBus
from appliance.conversation.journal import SUFFIX, journal_path, read_turns
from appliance.events import TurnFinished

log = logging.getLogger(__name__)

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID = re.compile(ID_PATTERN)
_LEGACY = ".json"


class HistoryStore:
    """Conversations as journal files in ``directory``; at most ``limit`` are kept, the oldest go first."""

    def __init__(self, directory: Path, limit: int = 200) -> None:
        self.directory = directory
        self.limit = limit
        self._cache: dict[str, dict[str, Any]] = {}
        self._loaded = False
        self._lock = trio.Lock()

    def _paths(self, conversation_id: str) -> tuple[Path, Path]:
        if not _ID.match(conversation_id):
            raise KeyError(conversation_id)
        return journal_path(self.directory, conversation_id), self.directory / f"{conversation_id}{_LEGACY}"

    def _read(self, conversation_id: str) -> dict[str, Any] | None:
        journal, legacy = self._paths(conversation_id)
        if journal.exists():
            with journal.open(encoding="utf-8", errors="replace") as lines:
                turns, first, last = read_turns(lines)
            if not turns:
                return None
            return {"id": conversation_id, "started_at": first, "updated_at": last, "turns": turns}
        if legacy.exists():
            data = json.loads(legacy.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("id") != conversation_id:
                raise ValueError("not a conversation record")
            if not isinstance(data.get("turns"), list):
                raise ValueError("not a conversation record")
            return data
        return None

    def _load_all(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.directory.is_dir():
            return
        ids = {f.stem for f in self.directory.iterdir() if f.suffix in (SUFFIX, _LEGACY) and _ID.match(f.stem)}
        for conversation_id in ids:
            try:
                data = self._read(conversation_id)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable history %s: %s", conversation_id, exc)
                continue
            if data is not None:
                self._cache[conversation_id] = data

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

    async def refresh(self, conversation_id: str) -> None:
        """Read one conversation again from disk (a turn of it has just been recorded)."""
        async with self._lock:
            try:
                data = await trio.to_thread.run_sync(self._read, conversation_id)
            except (OSError, ValueError, KeyError) as exc:
                log.error("cannot read history %s: %s", conversation_id, exc)
                return
            if data is not None:
                self._cache[conversation_id] = data
            await self._prune(keep=conversation_id)

    async def delete(self, conversation_id: str) -> bool:
        async with self._lock:
            if conversation_id not in self._cache:
                return False
            await trio.to_thread.run_sync(self._unlink, conversation_id)
            self._cache.pop(conversation_id, None)
            return True

    def _unlink(self, conversation_id: str) -> None:
        for path in self._paths(conversation_id):
            path.unlink(missing_ok=True)

    async def _prune(self, keep: str = "") -> None:
        if len(self._cache) <= self.limit:
            return
        oldest = sorted((d for d in self._cache.values() if d["id"] != keep), key=lambda d: d.get("updated_at") or 0)
        for data in oldest[: len(self._cache) - self.limit]:
            await trio.to_thread.run_sync(self._unlink, data["id"])
            self._cache.pop(data["id"], None)

    async def record(
        self,
        bus: EventBus,
        conversation_id: Callable[[], str],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow the bus: when a turn is finished (and so on disk), show its conversation as it is now."""
        await self.load()
        with bus.subscribe(TurnFinished, name="control-histories", size=512) as sub:
            task_status.started()
            async for event in sub:
                assert isinstance(event, TurnFinished)
                await self.refresh(event.conversation_id or conversation_id())
