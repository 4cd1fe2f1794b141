"""The whole appliance with ``brains = ["cloud", "remote", "offline"]``: the real CloudBrain against the fake
cloud, the real RemoteBrain against the fake AIAvatarKit server. For every cloud fault the reply still comes
(from the remote) and the utterance is not lost; then the cloud recovers and replies fail back to it."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from appliance.config import AppConfig
from appliance.events import BrainChanged, BrainHealthChanged, ConnectivityChanged, Heard, TurnFinished, TurnStarted
from appliance.turns import Utterance
from tests.fakes.aiavatar import FakeAvatarServer
from tests.fakes.cloud import fake_cloud
from tests.fakes.tcp import FailingResolver, refused_port
from tests.harness import cloud_config, running_appliance
from tests.remote_helpers import speech

UTTERANCE = Utterance(audio=speech(0.5))
ONE_SENTENCE = "This single long sentence is cut in the middle by the fake cloud before it ever ends"

# fault → (endpoint, behaviour, base_url override, reply override)
CLOUD_FAULTS: dict[str, tuple[str, dict[str, Any], str | None, str | None]] = {
    "http-500": ("llm", {"status": 500}, None, None),
    "429-retry-after": ("llm", {"status": 429, "retry_after": 30}, None, None),
    "connect-refused": ("llm", {}, "refused", None),
    "dns-failure": ("llm", {}, "dns", None),
    "read-timeout": ("llm", {"hang": True}, None, None),
    "sse-cut-mid-sentence": ("llm", {"cut": "abort"}, None, ONE_SENTENCE),
    "stt-500": ("stt", {"status": 500}, None, None),
    "tts-fails-after-llm-answered": ("tts", {"status": 500}, None, None),
}


def failover_config(cloud_url: str, remote_url: str, **overrides: Any) -> AppConfig:
    base = cloud_config(cloud_url, llm__timeout=1.0, stt__timeout=1.0, tts__timeout=1.0)
    data = base.model_dump(mode="python")
    for section in ("stt", "llm", "tts"):
        data[section]["api_key"] = "test-key"
    data["conversation"]["brains"] = ["cloud", "remote", "offline"]
    data["remote"] = {"url": remote_url, "api_key": "secret-key"}
    # Not hedged: on a loaded machine the fake cloud can take longer than the default 0.8 s to hear the
    # utterance, and the hedge would (rightly) send the audio itself on before the transcript exists.
    data["failover"] = {"open_initial": 0.5, "open_max": 2.0, "probe_timeout": 1.0, "hedge_after": 0}
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        data[section][key] = value
    return AppConfig.model_validate(data)


@pytest.fixture
async def avatar(nursery: trio.Nursery) -> FakeAvatarServer:
    server = FakeAvatarServer()
    await nursery.start(server.run)
    return server


@pytest.mark.parametrize("fault", sorted(CLOUD_FAULTS))
async def test_cloud_fault_reply_comes_from_remote(fault: str, avatar: FakeAvatarServer) -> None:
    endpoint, behaviour, base, reply = CLOUD_FAULTS[fault]
    resolver = FailingResolver()
    settings = {"reply": reply} if reply else {}
    async with fake_cloud(**settings) as cloud:
        for key, value in behaviour.items():
            setattr(getattr(cloud, endpoint), key, value)
        overrides: dict[str, Any] = {}
        if base == "refused":
            overrides["llm__base_url"] = f"http://127.0.0.1:{refused_port()}/v1"
        elif base == "dns":
            overrides["llm__base_url"] = "http://cloud-api.example/v1"
            trio.socket.set_custom_hostname_resolver(resolver)
        try:
            async with running_appliance(failover_config(cloud.url, avatar.url, **overrides)) as (app, log):
                await app.conversation.start_turn(UTTERANCE)
                finished = await log.wait_for(TurnFinished)
        finally:
            trio.socket.set_custom_hostname_resolver(None)
    assert finished.outcome == "done", finished
    assert "You said:" in finished.spoken  # the remote answered
    assert len(avatar.requests) == 1
    sent = avatar.requests[0]
    if endpoint == "stt":
        assert len(sent["audio"]) == 16_000  # the cloud never understood it: the audio itself went on
    else:
        assert sent["text"] == "What time is it?"  # the cloud's transcript went on; STT was not paid twice
    assert len(log.of(Heard)) == 1
    changed = log.of(BrainChanged)
    assert changed and changed[-1].brain == "remote"
    if base == "dns":
        assert set(resolver.lookups) == {"cloud-api.example"}  # answered locally: no DNS query left the machine
    assert avatar.violations == []


async def test_cut_after_the_first_sentence_apologises(avatar: FakeAvatarServer) -> None:
    async with fake_cloud() as cloud:
        cloud.llm.cut = "abort"
        cloud.llm.token_delay = 0.2  # the first sentence is spoken well before the cut
        async with running_appliance(failover_config(cloud.url, avatar.url)) as (app, log):
            await app.conversation.start_turn(UTTERANCE)
            finished = await log.wait_for(TurnFinished)
            assert finished.spoken == "[face:joy] It is nine o'clock. Sorry, I lost my connection."
            history = [m.content for m in app.conversation.history.messages()]
    assert history == ["What time is it?", "[face:joy] It is nine o'clock. Sorry, I lost my connection."]
    assert avatar.requests == []  # half an answer was heard: no second brain starts over


async def test_cloud_and_remote_down_offline_answers() -> None:
    async with fake_cloud() as cloud:
        cloud.stt.status = 503
        config = failover_config(cloud.url, f"ws://127.0.0.1:{refused_port()}/ws")
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(UTTERANCE)
            finished = await log.wait_for(TurnFinished)
    assert finished.outcome == "done" and "connected to the internet" in finished.spoken


async def test_failback_to_the_cloud_after_recovery(avatar: FakeAvatarServer) -> None:
    async with fake_cloud() as cloud:
        cloud.llm.status = 500
        async with running_appliance(failover_config(cloud.url, avatar.url, failover__failure_threshold=1)) as (
            app,
            log,
        ):
            await app.conversation.start_turn(UTTERANCE)
            first = await log.wait_for(TurnFinished)
            await log.wait_for(BrainHealthChanged, lambda e: e.brain == "cloud" and not e.healthy)
            await app.conversation.start_turn(UTTERANCE)  # the cloud's circuit is open: straight to the remote
            second = await log.wait_for(TurnFinished, lambda e: e.turn_id != first.turn_id)
            tried = len(cloud.bodies("/v1/audio/transcriptions"))
            cloud.reset()  # the cloud is back: the background probe (GET /models) notices
            await log.wait_for(BrainHealthChanged, lambda e: e.brain == "cloud" and e.healthy, timeout=10)
            await app.conversation.start_turn(UTTERANCE)
            third = await log.wait_for(TurnFinished, lambda e: e.turn_id not in (first.turn_id, second.turn_id))
    assert "You said:" in first.spoken and "You said:" in second.spoken
    assert "nine o'clock" in third.spoken
    assert tried == 1  # the second turn never tried the cloud
    assert [e.brain for e in log.of(BrainChanged)] == ["remote", "cloud"]
    assert [e.brain for e in log.of(TurnStarted)] == ["cloud", "remote", "cloud"]  # what the status line shows
    # what the LEDs show while idle: the backup colour while the remote answered, normal again after failback
    assert [(e.status, e.brain) for e in log.of(ConnectivityChanged)] == [("fallback", "remote"), ("online", "cloud")]
    assert app.body.leds is None or app.body.leds.connectivity == "online"


async def test_leds_show_the_fallback_brain_while_idle(avatar: FakeAvatarServer) -> None:
    async with fake_cloud() as cloud:
        cloud.llm.status = 500
        async with running_appliance(failover_config(cloud.url, avatar.url)) as (app, log):
            await app.conversation.start_turn(UTTERANCE)
            await log.wait_for(TurnFinished)
            await log.wait_for(ConnectivityChanged)
            leds = app.body.leds
            assert leds is not None
            with trio.fail_after(10):
                while leds.current_mode() != "fallback":  # idle again, on the backup brain
                    await trio.sleep(0.05)
