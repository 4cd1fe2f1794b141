"""Tracing of turns the cloud brain did not answer, exported to the OTLP/HTTP receiver of ``test_tracing``: the
remote AIAvatarKit server, the offline line, failover between them, and ``appliance serve``'s turns. Each turn is one trace whose ``turn``
span names the brain the user heard, with when the transcript and the first chunk came; through failover each
brain asked has its own ``brain`` span (answered, failed, or cancelled when beaten), with the cloud's provider
spans under the cloud's attempt."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from appliance.assembly.brains import serving_brain
from appliance.config import AppConfig
from appliance.events import TurnFinished
from appliance.server.http_api import HttpAvatarServer
from appliance.settings.brains import ServerConfig
from tests.fakes.aiavatar import FakeAvatarServer
from tests.fakes.cloud import fake_cloud
from tests.harness import cloud_config, running_appliance
from tests.http_serve_helpers import KEY, base, events
from tests.test_failover_cloud import UTTERANCE, failover_config
from tests.test_providers_agent import ASK
from tests.test_tracing import attrs, otlp_receiver


@pytest.fixture
async def avatar(nursery: trio.Nursery) -> FakeAvatarServer:
    server = FakeAvatarServer()
    await nursery.start(server.run)
    return server


def spans_by_name(receiver: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for span in receiver.spans():
        found.setdefault(span.name, []).append(span)
    return found


async def one_traced_turn(config: AppConfig, utterance: Any = UTTERANCE) -> TurnFinished:
    async with running_appliance(config) as (app, log):
        await app.conversation.start_turn(utterance)
        done = await log.wait_for(TurnFinished)
        assert await trio.to_thread.run_sync(app.tracing.flush)
    return done


def traced(config: AppConfig, endpoint: str, **sections: Any) -> AppConfig:
    data = config.model_dump(mode="python")
    data["tracing"] = {"enabled": True, "endpoint": endpoint}
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return AppConfig.model_validate(data)


async def test_a_turn_answered_by_the_remote_server_is_a_trace_naming_it(avatar: FakeAvatarServer) -> None:
    async with otlp_receiver() as (endpoint, receiver), fake_cloud() as cloud:
        config = traced(failover_config(cloud.url, avatar.url), endpoint, conversation__brains=["remote"])
        done = await one_traced_turn(config)
    assert done.outcome == "done" and "You said:" in done.spoken
    found = spans_by_name(receiver)
    assert set(found) == {"turn"}  # one brain, nothing failed over: the turn is the whole trace
    (turn,) = found["turn"]
    turn_attrs = attrs(turn)
    assert turn_attrs["appliance.brain"] == "remote" and turn_attrs["appliance.turn_id"] == done.turn_id
    assert turn_attrs["appliance.chunks"] >= 1 and turn_attrs["appliance.first_chunk_ms"] > 0
    assert turn.status.code == 1  # OK
    chunks = [e for e in turn.events if e.name == "chunk"]
    assert chunks and attrs(chunks[0])["appliance.brain"] == "remote" and "You said:" in attrs(chunks[0])["text"]
    assert all(b"secret-key" not in body for body in receiver.bodies)  # the remote's key is scrubbed too


async def test_a_turn_answered_by_the_offline_brain_is_a_trace_naming_it() -> None:
    async with otlp_receiver() as (endpoint, receiver), fake_cloud() as cloud:
        config = traced(failover_config(cloud.url, "ws://127.0.0.1:9/ws"), endpoint, conversation__brains=["offline"])
        done = await one_traced_turn(config, ASK)
    (turn,) = spans_by_name(receiver)["turn"]
    turn_attrs = attrs(turn)
    assert turn_attrs["appliance.brain"] == "offline" and turn_attrs["appliance.turn_id"] == done.turn_id
    assert turn_attrs["appliance.user_text"] == ASK.text and turn_attrs["appliance.transcript"] == ASK.text
    assert "transcript" in [e.name for e in turn.events]
    assert "connected to the internet" in attrs(next(e for e in turn.events if e.name == "chunk"))["text"]


async def test_through_failover_each_brain_asked_is_a_span_and_the_turn_names_the_one_heard(
    avatar: FakeAvatarServer,
) -> None:
    async with otlp_receiver() as (endpoint, receiver), fake_cloud() as cloud:
        cloud.llm.status = 500
        # no hedging: on a loaded machine a slow transcript could let the remote race in before the cloud fails
        config = traced(failover_config(cloud.url, avatar.url), endpoint, failover__hedge_after=0.0)
        done = await one_traced_turn(config)
    assert done.outcome == "done" and "You said:" in done.spoken
    found = spans_by_name(receiver)
    (turn,) = found["turn"]
    attempts = {attrs(s)["appliance.brain"]: s for s in found["brain"]}
    assert set(attempts) == {"cloud", "remote"}  # offline was never needed
    assert attrs(turn)["appliance.brain"] == "remote"
    assert all(s.trace_id == turn.trace_id for spans in found.values() for s in spans)
    assert all(s.parent_span_id == turn.span_id for s in found["brain"])
    cloud_attempt, remote_attempt = attempts["cloud"], attempts["remote"]
    assert attrs(cloud_attempt)["appliance.outcome"] == "failed" and cloud_attempt.status.code == 2  # ERROR
    assert "500" in cloud_attempt.status.message or "Unavailable" in cloud_attempt.status.message
    assert attrs(remote_attempt)["appliance.outcome"] == "answered" and attrs(remote_attempt)["appliance.chunks"] >= 1
    assert cloud_attempt.start_time_unix_nano <= remote_attempt.start_time_unix_nano
    # the cloud's own STT and LLM requests hang under the cloud's attempt, in the same trace
    assert found["stt"] and found["llm"]
    assert all(s.parent_span_id == cloud_attempt.span_id for s in found["stt"] + found["llm"])
    assert [attrs(e)["appliance.brain"] for e in turn.events if e.name == "chunk"] == ["remote"] * attrs(turn)[
        "appliance.chunks"
    ]


async def test_a_hung_cloud_beaten_by_the_remote_shows_as_cancelled(avatar: FakeAvatarServer) -> None:
    async with otlp_receiver() as (endpoint, receiver), fake_cloud() as cloud:
        cloud.stt.hang = True  # not even a transcript: no sign of life, so the remote is asked beside it
        config = traced(failover_config(cloud.url, avatar.url, stt__timeout=60.0), endpoint, failover__hedge_after=0.3)
        done = await one_traced_turn(config)
    assert done.outcome == "done" and "You said:" in done.spoken
    found = spans_by_name(receiver)
    attempts = {attrs(s)["appliance.brain"]: attrs(s) for s in found["brain"]}
    assert attempts["cloud"]["appliance.outcome"] == "cancelled" and attempts["cloud"]["appliance.cancelled"] is True
    assert attempts["remote"]["appliance.outcome"] == "answered"
    assert attrs(found["turn"][0])["appliance.brain"] == "remote"


async def test_turns_served_to_other_robots_are_traced_too(nursery: trio.Nursery) -> None:
    async with otlp_receiver() as (endpoint, receiver), fake_cloud() as cloud:
        config = traced(cloud_config(cloud.url), endpoint)
        brain, tracing = serving_brain(config)  # what `appliance serve` answers with
        server = HttpAvatarServer(brain, ServerConfig(host="127.0.0.1", port=0, http_port=0, api_key=KEY))  # type: ignore[arg-type]
        await nursery.start(server.run)
        async with httpx.AsyncClient(base_url=base(server), timeout=30) as client:
            frames = await events(client, "/chat", {"session_id": "s", "text": "What time is it?"})
        assert await trio.to_thread.run_sync(tracing.flush)
        tracing.shutdown()
    assert frames[-1]["type"] == "final"
    found = spans_by_name(receiver)
    (turn,) = found["turn"]
    assert attrs(turn)["appliance.brain"] == "cloud" and attrs(turn)["appliance.source"] == "remote"
    assert attrs(turn)["appliance.turn_id"] == frames[0]["transaction_id"]
    assert found["llm"] and all(s.parent_span_id == turn.span_id for s in found["llm"] + found["tts"])
