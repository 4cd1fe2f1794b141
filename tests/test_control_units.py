"""Parts of the control API on their own: event streams with stuck clients, the history store, restarts."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import trio

from appliance.bus import EventBus
from appliance.control.histories import HistoryStore
from appliance.control.sse import EventStream, Slots, format_event
from appliance.conversation.journal import TurnJournal
from appliance.events import ServiceStatus, TurnFinished, TurnTimings
from appliance.supervisor import Supervisor


async def test_a_stuck_client_is_dropped_and_its_slot_freed(autojump_clock):
    slots = Slots(1)
    assert slots.take() and not slots.take()
    produced = 0

    async def producer(out: trio.MemorySendChannel[tuple[str, Any]]) -> None:
        nonlocal produced
        for i in range(10_000):
            try:
                out.send_nowait(("tick", {"i": i}))
                produced += 1
            except trio.WouldBlock:
                return  # what the real producers do: a full buffer ends the stream
            await trio.sleep(0.001)

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) > 3:
            await trio.sleep_forever()  # the client stopped reading

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError

    stream = EventStream(producer, slots, buffer=16, heartbeat=15)
    with trio.fail_after(60):  # virtual time: the write deadline (5 s) must end it
        await stream({"type": "http"}, receive, send)
    assert slots.open == 0 and slots.take()
    assert produced < 10_000


async def test_a_vanished_client_ends_the_stream(autojump_clock):
    slots = Slots(2)
    slots.take()
    disconnect = trio.Event()

    async def producer(out: trio.MemorySendChannel[tuple[str, Any]]) -> None:
        await trio.sleep_forever()

    async def receive() -> dict[str, Any]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(EventStream(producer, slots, heartbeat=1.0), {"type": "http"}, receive, send)
        await trio.sleep(3.5)
        disconnect.set()
    assert slots.open == 0
    assert sum(1 for m in sent if m.get("body") == b": keep-alive\n\n") == 3
    assert sent[-1]["type"] == "http.response.body" and sent[-1].get("more_body")  # no final write to a gone peer


def test_sse_format_escapes_newlines():
    text = format_event("chunk", {"text": "two\nlines"}, 7).decode()
    assert text.startswith("id: 7\nevent: chunk\ndata: ")
    assert text.endswith("\n\n") and text.count("\n") == 4
    assert json.loads(text.split("data: ", 1)[1]) == {"text": "two\nlines"}


async def test_history_store_reads_the_journal_and_keeps_the_newest(tmp_path):
    bus = EventBus()
    directory = tmp_path / "h"
    store = HistoryStore(directory, limit=2)
    journal = TurnJournal(directory)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        await nursery.start(store.record, bus, lambda: "unused")
        for n, conversation in enumerate(["conv1", "conv1", "conv2", "conv3"]):
            await journal.begin(conversation, f"t{n}", brain="cloud", source="voice", heard=None, audio_seconds=1.5)
            await journal.heard(conversation, f"t{n}", f"question {n}")
            await journal.said(conversation, f"t{n}", f"answer {n}.")
            await journal.end(
                conversation,
                f"t{n}",
                outcome="done",
                brain="offline",
                spoken=f"answer {n}.",
                error=None,
                timings=asdict(TurnTimings(0.1, 0.2, 0.3, 0.4)),
            )
            bus.publish(TurnFinished(f"t{n}", "done", f"answer {n}.", conversation_id=conversation))
            with trio.fail_after(5):  # events are handled in order: wait until this turn is read back
                while store.get(conversation) is None or store.get(conversation)["turns"][-1]["turn_id"] != f"t{n}":
                    await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert sorted(row["id"] for row in store.summaries()) == ["conv2", "conv3"]  # limit 2: the oldest went
    assert not (directory / "conv1.jsonl").exists()
    (directory / "broken.json").write_text("{not json")
    (directory / "old.json").write_text(
        json.dumps(  # a record written by an earlier version
            {
                "id": "old",
                "started_at": 1.0,
                "updated_at": 2.0,
                "turns": [{"turn_id": "x", "heard": "hi", "spoken": "yo"}],
            }
        )
    )
    with (directory / "conv3.jsonl").open("a") as torn:  # a power cut mid-line, after a turn that never ended
        torn.write(json.dumps({"t": "begin", "turn_id": "t9", "at": 9.0, "heard": None, "audio_seconds": 2.5}) + "\n")
        torn.write('{"t": "said", "turn_id": "t9", "te')
    again = HistoryStore(directory)
    await again.load()
    assert sorted(row["id"] for row in again.summaries()) == ["conv2", "conv3", "old"]
    first, cut = again.get("conv3")["turns"]  # type: ignore[index]
    assert first["heard"] == "question 3" and first["brain"] == "offline" and first["timings"]["first_audio"] == 0.3
    assert first["spoken"] == "answer 3." and first["audio_seconds"] == 1.5
    assert cut["outcome"] == "cut off" and cut["audio_seconds"] == 2.5 and cut["spoken"] == ""


class Counter:
    name = "counter"

    def __init__(self) -> None:
        self.starts = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        task_status.started()
        await trio.sleep_forever()


async def test_the_supervisor_restarts_a_service_in_place_for_new_configuration(autojump_clock):
    bus = EventBus()
    inner = Counter()
    supervisor = Supervisor(bus, handle_signals=False)
    supervisor.add(inner)
    with bus.subscribe(ServiceStatus, name="test") as sub:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            while sub.receive.statistics().current_buffer_used:
                sub.receive.receive_nowait()  # the start's own statuses
            assert inner.starts == 1
            assert await supervisor.restart("counter")
            record = supervisor.records["counter"]
            assert inner.starts == 2 and record.reconfigured == 1
            assert record.restarts == 0 and record.status == "running"  # not a failure
            assert record.service is inner  # restarted in place, nothing swapped in
            nursery.cancel_scope.cancel()
        statuses = [sub.receive.receive_nowait().status for _ in range(2)]
    assert statuses == ["restarting", "running"]


async def test_reconfigure_hands_over_new_settings_then_restarts(autojump_clock):
    class Configured(Counter):
        name = "configured"
        config = "old"

    service = Configured()
    supervisor = Supervisor(EventBus(), handle_signals=False)
    supervisor.add(service)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        assert supervisor.takes_settings("configured") and not supervisor.takes_settings("absent")
        assert await supervisor.reconfigure("configured", "new")
        assert service.config == "new" and service.starts == 2
        nursery.cancel_scope.cancel()


async def test_the_journal_still_writes_after_its_writer_stopped(tmp_path):
    """At shutdown the writer task is cancelled with everything else; a turn ending in a shielded scope still
    gets its record on disk (queued appends are flushed, later ones written by their callers)."""
    journal = TurnJournal(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(journal.run)
        await journal.begin("c", "t1", brain="cloud", source="voice", heard="hello", audio_seconds=None)
        nursery.cancel_scope.cancel()
    with trio.fail_after(5):  # before the fix this waited for a writer that was gone, forever
        await journal.end("c", "t1", outcome="interrupted", brain="cloud", spoken="Hi.", error=None, timings=None)
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert [json.loads(line)["t"] for line in lines] == ["begin", "end"]
    assert json.loads(lines[1])["outcome"] == "interrupted"
