"""Conversations kept per ``context_id``: in this process, or in a SQLite file shared by serve's workers.

With ``[server] workers`` above 1 each robot lands on whichever worker the kernel hands its connection to, and
a robot that reconnects may land on another: its conversation must not depend on that. The workers then share
one SQLite file in WAL mode (AIAvatarKit keeps its contexts in SQLite by context_id too). A conversation is one
row, rewritten whole inside a write transaction: a worker that dies mid-write leaves the previous version, and
two workers adding a turn to one context at once both land, one after the other. Reads never wait for a writer.
The calls are made inline: a read or a one-row write takes tens of microseconds, and the write lock is only
ever held for one such write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

from appliance.conversation.history import ConversationHistory
from appliance.turns import Message

log = logging.getLogger(__name__)

MAX_CONTEXTS = 256  # conversations kept in one process
MAX_STORED = 4096  # conversations kept in the shared file, the least recently used dropped first
_LONGEST_KEY = 200  # a longer context_id is stored by its hash: a client names it, its size is not ours to keep


class History(Protocol):
    def messages(self) -> tuple[Message, ...]: ...

    def add_turn(self, user: str | None, assistant: str) -> None: ...


class Histories(Protocol):
    def open(self, context_id: str, seed: Any = None) -> History:
        """The conversation ``context_id``; a new one starts from ``seed`` (a robot's ``metadata.history``)."""
        ...


def seeded_history(limit: int, idle_timeout: float, seed: Any, history: ConversationHistory | None = None) -> Any:
    """A new conversation; a robot that failed over to us mid-conversation tells what was said (``seed``)."""
    history = history or ConversationHistory(limit, idle_timeout)
    if isinstance(seed, list):
        user: str | None = None
        for item in seed:
            if not isinstance(item, dict) or not isinstance(item.get("content"), str):
                continue
            if item.get("role") == "user":
                user = item["content"]
            elif item.get("role") == "assistant":
                history.add_turn(user, item["content"])
                user = None
    return history


class LocalHistories:
    """One process's conversations, the least recently used forgotten beyond ``MAX_CONTEXTS``."""

    def __init__(self, limit: int = 20, idle_timeout: float = 600.0) -> None:
        self.limit = limit
        self.idle_timeout = idle_timeout
        self._histories: OrderedDict[str, ConversationHistory] = OrderedDict()

    def open(self, context_id: str, seed: Any = None) -> ConversationHistory:
        history = self._histories.get(context_id)
        if history is None:
            history = seeded_history(self.limit, self.idle_timeout, seed)
            self._histories[context_id] = history
            while len(self._histories) > MAX_CONTEXTS:
                self._histories.popitem(last=False)
        self._histories.move_to_end(context_id)
        return history

    def close(self) -> None:
        pass


class _Stored(ConversationHistory):
    """A conversation as the file holds it: its messages and when it was last spoken to, in wall-clock time
    (the workers' monotonic clocks do not agree)."""

    def __init__(self, limit: int, idle_timeout: float) -> None:
        super().__init__(limit, idle_timeout, clock=time.time)

    @classmethod
    def load(cls, limit: int, idle_timeout: float, body: str | None, key: str) -> _Stored:
        history = cls(limit, idle_timeout)
        if body is None:
            return history
        try:
            data = json.loads(body)
            history._messages = [_message(role, content) for role, content in data["messages"]]
            history._last = float(data["last"]) if data.get("last") is not None else None
        except (ValueError, TypeError, KeyError) as exc:  # a damaged row: the conversation starts afresh
            log.warning("conversation %s unreadable (%s); starting it afresh", key[:40], exc)
            return cls(limit, idle_timeout)
        return history

    def dump(self) -> str:
        return json.dumps({"messages": [[m.role, m.content] for m in self._messages], "last": self._last})


def _message(role: Any, content: Any) -> Message:
    if role not in ("user", "assistant") or not isinstance(content, str):
        raise ValueError(f"not a message: {role!r}")
    return Message(role, content)


class SharedHistories:
    """Conversations in one SQLite file (WAL), shared by every worker that opens it."""

    def __init__(self, path: Path, limit: int = 20, idle_timeout: float = 600.0, *, busy_timeout: float = 2.0) -> None:
        self.limit = limit
        self.idle_timeout = idle_timeout
        # isolation_level None: transactions are begun here, explicitly (BEGIN IMMEDIATE takes the write lock
        # before reading, so two workers adding to one conversation cannot both read the old version).
        self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        if self._db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # the mode lasts in the file
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # in WAL mode a commit is atomic without a sync per turn
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS conversations (key TEXT PRIMARY KEY, body TEXT NOT NULL, updated REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS conversations_updated ON conversations (updated)")

    def open(self, context_id: str, seed: Any = None) -> StoredHistory:
        key = (
            context_id
            if len(context_id) <= _LONGEST_KEY
            else "sha256:" + hashlib.sha256(context_id.encode()).hexdigest()
        )
        if isinstance(seed, list) and seed:
            seeded = seeded_history(self.limit, self.idle_timeout, seed, _Stored(self.limit, self.idle_timeout))
            self._db.execute(
                "INSERT OR IGNORE INTO conversations (key, body, updated) VALUES (?, ?, ?)",
                (key, seeded.dump(), time.time()),
            )
        return StoredHistory(self, key)

    def read(self, key: str) -> _Stored:
        row = self._db.execute("SELECT body FROM conversations WHERE key = ?", (key,)).fetchone()
        return _Stored.load(self.limit, self.idle_timeout, row[0] if row else None, key)

    def add_turn(self, key: str, user: str | None, assistant: str) -> None:
        """Read, add and write back in one write transaction: whole or not at all."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT body FROM conversations WHERE key = ?", (key,)).fetchone()
            history = _Stored.load(self.limit, self.idle_timeout, row[0] if row else None, key)
            history.add_turn(user, assistant)
            now = time.time()
            db.execute(
                "INSERT OR REPLACE INTO conversations (key, body, updated) VALUES (?, ?, ?)", (key, history.dump(), now)
            )
            if row is None:  # a new conversation: forget the silent ones, and the oldest beyond the cap
                db.execute("DELETE FROM conversations WHERE updated < ?", (now - self.idle_timeout,))
                db.execute(
                    "DELETE FROM conversations WHERE key NOT IN "
                    "(SELECT key FROM conversations ORDER BY updated DESC LIMIT ?)",
                    (MAX_STORED,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()


class StoredHistory:
    """One conversation in the shared file: read afresh at each turn, each turn added in its own transaction."""

    def __init__(self, store: SharedHistories, key: str) -> None:
        self.store = store
        self.key = key

    def messages(self) -> tuple[Message, ...]:
        return self.store.read(self.key).messages()

    def add_turn(self, user: str | None, assistant: str) -> None:
        try:
            self.store.add_turn(self.key, user, assistant)
        except sqlite3.Error as exc:  # the reply was given; only its memory is lost, and the robot is told nothing
            log.warning("could not store a turn of %s: %s", self.key[:40], exc)
