"""Behaviour hooks: every stage of a reply reaches user code in order, and no hook (slow, failing, blocking,
falling behind, removed) can delay or end a turn."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from appliance.agent.response_hooks import ResponseHooks, ResponseStage
from appliance.bus import EventBus
from appliance.config import AppConfig
from appliance.events import Heard, SentenceStarted, TurnFinished, TurnStarted
from appliance.settings_base import ConfigError
from tests.fakes.cloud import fake_cloud
from tests.harness import cloud_config, running_appliance
from tests.test_providers_agent import ASK

SEEN: list[ResponseStage] = []


def record(stage: ResponseStage) -> None:  # plain: runs in a worker thread
    SEEN.append(stage)


async def record_async(stage: ResponseStage) -> None:
    SEEN.append(stage)


@pytest.fixture(autouse=True)
def _clear() -> None:
    SEEN.clear()


def one_turn_of_events(turn_id: str = "t1", outcome: str = "done") -> list[Any]:
    return [
        TurnStarted(turn_id, "cloud"),
        Heard(turn_id, "What time is it?"),
        SentenceStarted(turn_id, 0, "It is nine."),
        SentenceStarted(turn_id, 1, "Have a nice day."),
        TurnFinished(
            turn_id, outcome, spoken="It is nine. Have a nice day.", error="boom" if outcome == "failed" else None
        ),
    ]


async def publish_all(bus: EventBus, events: list[Any]) -> None:
    for event in events:
        bus.publish(event)
        await trio.lowlevel.checkpoint()


async def test_each_stage_reaches_its_hooks_in_order_with_what_was_said() -> None:
    bus = EventBus()
    hooks = ResponseHooks(bus)
    for stage in ("start", "chunk", "final", "error"):
        hooks.add(stage, record_async)
    async with trio.open_nursery() as nursery:
        await nursery.start(hooks.run)
        await publish_all(bus, one_turn_of_events("t1") + one_turn_of_events("t2", "failed"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [(s.turn_id, s.type, s.text, s.is_first_chunk) for s in SEEN] == [
        ("t1", "start", "", False),
        ("t1", "chunk", "It is nine.", True),
        ("t1", "chunk", "Have a nice day.", False),
        ("t1", "final", "It is nine. Have a nice day.", False),
        ("t2", "start", "", False),
        ("t2", "chunk", "It is nine.", True),
        ("t2", "chunk", "Have a nice day.", False),
        ("t2", "error", "boom", False),
    ]
    assert SEEN[1].user_text == "What time is it?" and SEEN[3].outcome == "done" and SEEN[7].outcome == "failed"
    assert all(s.brain == "cloud" for s in SEEN)


async def test_a_slow_hook_is_cut_off_and_a_failing_one_called_again(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    calls: list[str] = []

    async def stuck(stage: ResponseStage) -> None:
        calls.append(stage.type)
        await trio.sleep_forever()

    async def broken(stage: ResponseStage) -> None:
        calls.append(f"broken {stage.type}")
        raise RuntimeError("servo unplugged")

    bus = EventBus()
    hooks = ResponseHooks(bus, timeout=2.0)
    hooks.add("start", stuck)
    hooks.add("final", stuck)
    hooks.add("chunk", broken)
    async with trio.open_nursery() as nursery:
        await nursery.start(hooks.run)
        await publish_all(bus, one_turn_of_events())
        await trio.sleep(5)  # virtual time: both stuck calls run out
        nursery.cancel_scope.cancel()
    assert calls.count("broken chunk") == 2  # called again after failing
    assert calls.count("start") == 1 and calls.count("final") == 1
    text = caplog.text
    assert "response hook" in text and "took over 2 s on start" in text and "took over 2 s on final" in text
    assert "failed on chunk" in text and "servo unplugged" in text


async def test_a_hook_that_falls_behind_loses_stages_and_never_blocks_the_bus(caplog: pytest.LogCaptureFixture) -> None:
    release = trio.Event()
    got: list[str] = []

    async def slow(stage: ResponseStage) -> None:
        got.append(stage.turn_id)
        await release.wait()

    bus = EventBus()
    hooks = ResponseHooks(bus, timeout=60, max_pending=2)
    hooks.add("start", slow)
    async with trio.open_nursery() as nursery:
        await nursery.start(hooks.run)
        for n in range(6):
            bus.publish(TurnStarted(f"t{n}", "cloud"))  # publishing never waits for the hook
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert got == ["t0", "t1", "t2"]  # one running, two queued; the rest skipped
    assert "falling behind: start stage of turn t5 skipped (3 so far)" in caplog.text


async def test_plain_functions_run_off_the_event_loop() -> None:
    threads: list[str] = []

    def blocking(stage: ResponseStage) -> None:
        threads.append(threading.current_thread().name)

    bus = EventBus()
    hooks = ResponseHooks(bus)
    hooks.add("start", blocking)
    async with trio.open_nursery() as nursery:
        await nursery.start(hooks.run)
        bus.publish(TurnStarted("t1", "cloud"))
        with trio.fail_after(10):
            while not threads:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert threads and threads[0] != threading.main_thread().name


async def test_hooks_added_while_running_and_removed_hooks_stop() -> None:
    bus = EventBus()
    hooks = ResponseHooks(bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(hooks.run)
        hooks.add("start", record_async)
        bus.publish(TurnStarted("t1", "cloud"))
        await trio.testing.wait_all_tasks_blocked()
        hooks.remove(record_async)
        bus.publish(TurnStarted("t2", "cloud"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [s.turn_id for s in SEEN] == ["t1"]


def test_bad_stages_and_paths_are_refused_by_name() -> None:
    hooks = ResponseHooks(EventBus())
    with pytest.raises(ValueError, match="unknown stage 'begin'"):
        hooks.add("begin", record)
    with pytest.raises(TypeError, match="must be callable"):
        hooks.add("start", "tests.test_response_hooks:record")  # type: ignore[arg-type]
    from appliance.assembly.brains import build_response_hooks

    config = AppConfig.model_validate({"response_hooks": {"on_chunk": ["tests.test_response_hooks:record", "nope:x"]}})
    with pytest.raises(ConfigError, match=r"response_hooks.on_chunk\[1\] 'nope:x': cannot import"):
        build_response_hooks(EventBus(), config)
    with pytest.raises(ValueError, match="timeout"):
        AppConfig.model_validate({"response_hooks": {"timeout": 0}})


def test_check_config_reports_a_hook_that_cannot_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appliance.cli import main

    path = tmp_path / "a.toml"
    path.write_text('[response_hooks]\non_start = ["no_such_module:f"]\n')
    assert main(["--config", str(path), "check-config"]) == 2
    assert "response_hooks.on_start[0] 'no_such_module:f'" in capsys.readouterr().err


async def test_hooks_from_config_see_a_real_turn_and_never_slow_it() -> None:
    async with fake_cloud() as cloud:
        config = cloud_config(
            cloud.url,
            response_hooks__on_start=["tests.test_response_hooks:record"],
            response_hooks__on_chunk=["tests.test_response_hooks:record_async"],
            response_hooks__on_final=["tests.test_response_hooks:record"],
        )
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(ASK)
            done = await log.wait_for(TurnFinished)
            with trio.fail_after(10):
                while not SEEN or SEEN[-1].type != "final":
                    await trio.sleep(0.01)
    assert done.outcome == "done"
    assert [s.type for s in SEEN] == ["start", "chunk", "chunk", "chunk", "final"]
    assert [s.is_first_chunk for s in SEEN if s.type == "chunk"] == [True, False, False]
    assert SEEN[-1].text == done.spoken and SEEN[1].text.startswith("[face:joy]") is False
