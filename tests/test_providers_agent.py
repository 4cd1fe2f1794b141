"""Agent features through whole turns of the real appliance, configured from config data only: tools
(pydantic-validated, failing, slow with a progress sentence, added at runtime), MCP over stdio, guardrails,
request merging, the on-finish hook, vision, a voice per language, and each provider chosen from config."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from appliance.agent.tools import ToolError, tool
from appliance.audio.base import AudioClip
from appliance.brains.cloud import FinishedTurn
from appliance.config import AppConfig
from appliance.events import Heard, SentenceStarted, TurnFinished
from appliance.turns import Utterance
from tests.fakes.providers import KEY, fake_providers
from tests.harness import cloud_config, running_appliance

ASK = Utterance(text="What's the weather in Tokyo?")
SPEECH = Utterance(audio=AudioClip((np.sin(np.arange(9600) / 4) * 6000).astype(np.int16), 16000))
MCP_SERVER = Path(__file__).parent / "fakes" / "mcp_server.py"

calls: list[Any] = []
finished: list[FinishedTurn] = []


hook_release: list[trio.Event] = []


async def record_finish(turn: FinishedTurn) -> None:
    if hook_release:
        await hook_release[0].wait()  # a slow memory store: the turn must not wait for it
    finished.append(turn)


def get_weather(city: str, days: int = 1) -> dict[str, Any]:
    """Forecast for a city."""
    calls.append((city, days))
    return {"city": city, "days": days, "sky": "sunny"}


def block_secrets(text: str) -> str | None:
    return text.replace("password", "(secret)") if "password" in text else None


@pytest.fixture(autouse=True)
def _clear() -> None:
    calls.clear()
    finished.clear()
    hook_release.clear()


async def one_turn(
    config: AppConfig, utterance: Utterance = ASK, setup: Any = None
) -> tuple[Any, TurnFinished, list[str]]:
    async with running_appliance(config) as (app, log):
        if setup is not None:
            await setup(app)
        await app.conversation.start_turn(utterance)
        done = await log.wait_for(TurnFinished)
    return app, done, [e.text for e in log.of(SentenceStarted)]


# --- tools ----------------------------------------------------------------------------------------


async def test_config_tool_round_trip_with_validated_arguments() -> None:
    async with fake_providers(tool_call=("get_weather", {"city": "Tokyo", "days": "3"})) as fake:
        config = cloud_config(fake.url, llm__tools=[{"function": "tests.test_providers_agent:get_weather"}])
        _, done, spoken = await one_turn(config)
    assert done.outcome == "done"
    assert calls == [("Tokyo", 3)]  # "3" was validated into the int the function declared
    assert spoken == ['The tool says {"city": "Tokyo", "days": 3, "sky": "sunny"}.']
    offered = fake.bodies("/v1/chat/completions")[0]["tools"][0]["function"]
    assert offered["name"] == "get_weather" and offered["description"] == "Forecast for a city."
    assert offered["parameters"]["required"] == ["city"]


async def test_invalid_arguments_go_back_to_the_model_not_to_the_function() -> None:
    async with fake_providers(tool_call=("get_weather", {"city": "Tokyo", "days": "many"})) as fake:
        config = cloud_config(fake.url, llm__tools=[{"function": "tests.test_providers_agent:get_weather"}])
        _, done, spoken = await one_turn(config)
    assert done.outcome == "done" and calls == []
    assert spoken[0].startswith("The tool says Invalid arguments: days:")
    tool_message = fake.bodies("/v1/chat/completions")[1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_fake1"


async def test_failing_tool_is_reported_to_the_model_and_the_turn_goes_on() -> None:
    @tool
    def lights(room: str) -> str:
        """Switch on the lights."""
        raise ToolError(f"the {room} lamp is unplugged")

    async def add_tool(app: Any) -> None:
        app.tools.add(lights)  # added at runtime, after start

    async with fake_providers(tool_call=("lights", {"room": "kitchen"}), tool_reply="Sorry, {result}.") as fake:
        _, done, spoken = await one_turn(cloud_config(fake.url), setup=add_tool)
    assert done.outcome == "done"
    assert spoken == ["Sorry, the kitchen lamp is unplugged."]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_slow_tool_says_its_progress_sentence_first(provider: str) -> None:
    @tool(progress="Let me check that for you.")
    async def slow_lookup(query: str) -> str:
        """Looks something up slowly."""
        await trio.sleep(0.8)
        return f"found {query}"

    async def add_tool(app: Any) -> None:
        app.tools.add(slow_lookup)

    async with fake_providers(tool_call=("slow_lookup", {"query": "trains"})) as fake:
        overrides: dict[str, Any] = {"llm__progress_after": 0.1, "llm__provider": provider}
        if provider != "openai":
            overrides["llm__base_url"] = fake.url
        _, done, spoken = await one_turn(cloud_config(fake.url, **overrides), setup=add_tool)
    assert done.outcome == "done"
    assert spoken == ["Let me check that for you.", "The tool says found trains."]


async def test_mcp_server_over_stdio_lists_and_calls_tools() -> None:
    async with fake_providers(tool_call=("calc_add", {"a": 2, "b": 40})) as fake:
        config = cloud_config(
            fake.url,
            llm__mcp_servers=[
                {"name": "tiny", "command": [sys.executable, str(MCP_SERVER)], "prefix": "calc_", "timeout": 20}
            ],
        )
        async with running_appliance(config) as (app, log):
            with trio.fail_after(30):
                while app.tools.get("calc_add") is None:
                    await trio.sleep(0.05)
            names = sorted(t.name for t in app.tools)
            await app.conversation.start_turn(ASK)
            done = await log.wait_for(TurnFinished)
            spoken = [e.text for e in log.of(SentenceStarted)]
            failed = await app.tools.run(_call("calc_explode", {"reason": "on purpose"}))
    assert names == ["calc_add", "calc_explode"]
    assert done.outcome == "done" and spoken == ["The tool says 42."]
    assert failed.is_error and "explode" in failed.content
    described = {t["function"]["name"]: t["function"] for t in fake.bodies("/v1/chat/completions")[0]["tools"]}
    assert described["calc_add"]["parameters"]["required"] == ["a", "b"]


def _call(name: str, args: dict[str, Any]) -> Any:
    from appliance.providers.llm.base import ToolCall

    return ToolCall("c1", name, args)


# --- guardrails, merging, hooks -------------------------------------------------------------------


async def test_request_guardrail_blocks_without_asking_the_model() -> None:
    async with fake_providers() as fake:
        config = cloud_config(
            fake.url, llm__guardrails=[{"pattern": r"\bweather\b", "message": "I'd rather not talk about the weather."}]
        )
        _, done, spoken = await one_turn(config)
    assert spoken == ["I'd rather not talk about the weather."]
    assert "/v1/chat/completions" not in fake.paths()


async def test_request_hook_rewrites_and_reply_guardrail_rewrites() -> None:
    async with fake_providers(reply="My password is hunter2. Nice day.") as fake:
        config = cloud_config(
            fake.url,
            llm__guardrails=[
                {"hook": "tests.test_providers_agent:block_secrets", "target": "request"},
                {"pattern": "hunter2", "target": "reply", "action": "rewrite", "replacement": "*****"},
            ],
        )
        _, done, spoken = await one_turn(config, Utterance(text="Tell me the password"))
    assert fake.bodies("/v1/chat/completions")[0]["messages"][-1]["content"] == "Tell me the (secret)"
    assert spoken == ["My password is *****.", "Nice day."]
    assert all("hunter2" not in b["input"] for b in fake.bodies("/v1/audio/speech"))


async def test_reply_guardrail_block_ends_the_reply() -> None:
    async with fake_providers(reply="First this. Then forbidden words. Then more.") as fake:
        config = cloud_config(
            fake.url,
            llm__guardrails=[{"pattern": "forbidden", "target": "reply", "message": "Let's change the subject."}],
        )
        _, _, spoken = await one_turn(config)
    assert spoken == ["First this.", "Let's change the subject."]


async def test_request_interrupting_an_unanswered_one_is_merged() -> None:
    async with fake_providers() as fake:
        fake.llm.latency = 0.5  # the first request is still waiting for its first token
        config = cloud_config(fake.url, llm__merge_window=5.0)
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(Utterance(text="What's the weather"))
            await log.wait_for(Heard)
            await app.conversation.start_turn(Utterance(text="in Tokyo"))
            await log.wait_for(Heard, lambda e: e.text == "in Tokyo")
            await app.conversation.start_turn(Utterance(text="tomorrow?"))
            await log.wait_for(TurnFinished, lambda e: e.outcome == "done")
    last = fake.bodies("/v1/chat/completions")[-1]["messages"]
    # One question, not also its halves as questions of their own.
    assert [m["content"] for m in last[1:]] == ["What's the weather in Tokyo tomorrow?"]


async def test_request_after_part_of_the_answer_was_heard_is_not_merged() -> None:
    async with fake_providers() as fake:
        fake.llm.token_delay = 0.05  # slow enough to interrupt after the first sentence
        config = cloud_config(fake.url, llm__merge_window=30.0)
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(Utterance(text="What time is it?"))
            await log.wait_for(SentenceStarted)
            await app.conversation.start_turn(Utterance(text="And tomorrow?"))
            await log.wait_for(TurnFinished, lambda e: e.outcome == "done")
    last = fake.bodies("/v1/chat/completions")[-1]["messages"]
    assert last[-1] == {"role": "user", "content": "And tomorrow?"}
    assert last[-2]["role"] == "assistant" and last[-3] == {"role": "user", "content": "What time is it?"}


async def test_on_finish_hook_gets_the_exchange() -> None:
    async with fake_providers() as fake:
        config = cloud_config(fake.url, llm__on_finish="tests.test_providers_agent:record_finish")
        hook_release.append(trio.Event())
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(ASK)
            done = await log.wait_for(TurnFinished)  # the turn ended while the hook was still waiting
            assert finished == []
            hook_release[0].set()
            with trio.fail_after(10):
                while not finished:
                    await trio.sleep(0.05)
    assert len(finished) == 1
    assert finished[0].user_text == ASK.text and finished[0].reply_text == fake.reply
    assert finished[0].turn_id == done.turn_id


# --- vision and voices ----------------------------------------------------------------------------


async def test_vision_tag_takes_a_picture_and_asks_again(tmp_path: Path) -> None:
    picture = tmp_path / "room.jpg"
    picture.write_bytes(b"\xff\xd8\xff\xe0" + b"jpeg-body" * 10)
    async with fake_providers(reply="Let me look. [vision:camera]", image_reply="I see a tidy room.") as fake:
        config = cloud_config(fake.url, llm__camera="file", llm__camera_image=str(picture))
        _, done, spoken = await one_turn(config, Utterance(text="What do you see?"))
    assert spoken == ["Let me look.", "I see a tidy room."]
    second = fake.bodies("/v1/chat/completions")[1]["messages"]
    images = [p for m in second if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image_url"]
    assert len(images) == 1 and images[0]["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/4")


async def test_look_tool_sends_the_picture_with_the_next_request(tmp_path: Path) -> None:
    picture = tmp_path / "room.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"png-body" * 10)
    async with fake_providers(tool_call=("look", {}), image_reply="A cat is on the sofa.") as fake:
        config = cloud_config(fake.url, llm__camera="file", llm__camera_image=str(picture), llm__camera_tool=True)
        _, done, spoken = await one_turn(config, Utterance(text="What is in front of you?"))
    assert spoken == ["A cat is on the sofa."]
    first, second = fake.bodies("/v1/chat/completions")
    assert [t["function"]["name"] for t in first["tools"]] == ["look"]
    parts = [p for m in second["messages"] if isinstance(m["content"], list) for p in m["content"]]
    assert any(p.get("image_url", {}).get("url", "").startswith("data:image/png;base64,") for p in parts)
    assert second["messages"][-1]["role"] == "tool"


async def test_lang_tag_switches_to_that_languages_voice() -> None:
    async with fake_providers(reply="[lang:ja] こんにちは、ロボです。 [lang:en] Nice to meet you.") as fake:
        config = cloud_config(
            fake.url, tts__voices={"ja": {"provider": "voicevox", "base_url": fake.url, "speaker": 2}}
        )
        _, done, spoken = await one_turn(config)
    assert done.outcome == "done"
    assert [b["text"] for b in fake.bodies("/audio_query")] == ["こんにちは、ロボです。"]
    assert [b["input"] for b in fake.bodies("/v1/audio/speech")] == ["Nice to meet you."]


# --- each provider, from config alone ---------------------------------------------------------------

COMBOS = {
    "google+gemini+voicevox": ({"provider": "google"}, {"provider": "gemini"}, {"provider": "voicevox"}),
    "azure+dify+azure": (
        {"provider": "azure", "region": "x"},
        {"provider": "dify"},
        {"provider": "azure", "region": "x"},
    ),
    "amivoice+anthropic+google": ({"provider": "amivoice"}, {"provider": "anthropic"}, {"provider": "google"}),
    "openai+openai+http": ({}, {}, {"provider": "http", "url": "{url}/tts", "body": '{"text": "{text}"}'}),
}


@pytest.mark.parametrize("combo", sorted(COMBOS))
async def test_whole_turn_for_each_provider_from_config(combo: str) -> None:
    stt, llm, tts = COMBOS[combo]
    async with fake_providers() as fake:

        def section(values: dict[str, Any], openai_base: str) -> dict[str, Any]:
            out = {k: v.replace("{url}", fake.url) if isinstance(v, str) else v for k, v in values.items()}
            out.setdefault("api_key", KEY)
            if not values.get("provider") or values.get("provider") == "openai":
                out["base_url"] = openai_base
            elif values["provider"] == "dify":
                out["base_url"] = f"{fake.url}/v1"
            elif values["provider"] == "amivoice":
                out["base_url"] = f"{fake.url}/v1"
            elif values["provider"] != "http":
                out["base_url"] = fake.url
            return out

        config = AppConfig.model_validate(
            {
                "stt": section(stt, f"{fake.url}/v1"),
                "llm": section(llm, f"{fake.url}/v1"),
                "tts": section(tts, f"{fake.url}/v1"),
                "conversation": {"brain": "cloud"},
                "audio": {"input": "simulated", "output": "simulated", "simulated_speech_after": None},
                "gpio": {"pin_factory": "mock"},
                "log": {"status_line": "off"},
            }
        )
        _, done, spoken = await one_turn(config, SPEECH)
    assert done.outcome == "done", done
    assert spoken == ["It is nine o'clock.", "Time for breakfast!", "Have a nice day."]


async def test_mcp_server_over_streamable_http() -> None:
    from appliance.agent.mcp_tools import MCPServerConnection
    from appliance.agent.tools import ToolRegistry
    from tests.fakes.mcp_server import serve_http

    registry = ToolRegistry()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_http)
        connection = MCPServerConnection("tiny-http", registry, url=url, headers={"X-Token": "t"}, timeout=10)
        with trio.fail_after(30):
            await nursery.start(connection.run)
        result = await registry.run(_call("add", {"a": 20, "b": 22}))
        nursery.cancel_scope.cancel()
    assert sorted(t.name for t in registry) == []  # the connection's tools left with it
    assert not result.is_error and result.content == "42"


async def test_barge_in_during_a_slow_tool_cancels_it() -> None:
    from appliance.events import CancelTurnRequested

    cancelled = trio.Event()

    @tool
    async def wait_for_pizza() -> str:
        """Waits for the pizza."""
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        return "never"

    async with fake_providers(tool_call=("wait_for_pizza", {})) as fake:
        async with running_appliance(cloud_config(fake.url)) as (app, log):
            app.tools.add(wait_for_pizza)
            await app.conversation.start_turn(ASK)
            with trio.fail_after(10):
                while "/v1/chat/completions" not in fake.paths():
                    await trio.sleep(0.01)
            await trio.sleep(0.2)
            app.bus.publish(CancelTurnRequested("test"))
            done = await log.wait_for(TurnFinished)
            with trio.fail_after(5):
                await cancelled.wait()
    assert done.outcome == "interrupted"


def test_config_errors_name_their_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.app import build_appliance
    from appliance.settings_base import ConfigError

    for var in ("GEMINI_API_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    config = AppConfig.model_validate(
        {
            "conversation": {"brain": "cloud"},
            "stt": {"api_key": "k"},
            "tts": {"provider": "voicevox"},
            "llm": {
                "provider": "gemini",
                "on_finish": "tests.test_providers_agent:nope",
                "tools": [{"function": "json.loads"}],
            },
        }
    )
    with pytest.raises(ConfigError) as info:
        build_appliance(config, handle_signals=False)
    report = info.value.report()
    assert "llm.api_key" in report and "GEMINI_API_KEY" in report
    assert "llm.on_finish" in report and "'nope'" in report
    assert "llm.tools[0].function" in report


def test_provider_specific_settings_are_checked() -> None:
    from pydantic import ValidationError

    for bad in (
        {"stt": {"provider": "azure"}},
        {"tts": {"provider": "http"}},
        {"llm": {"provider": "dify"}},
        {"llm": {"mcp_servers": [{"name": "x"}]}},
        {"llm": {"guardrails": [{"pattern": "x"}]}},
    ):
        with pytest.raises(ValidationError):
            AppConfig.model_validate(bad)
    voicevox_only = AppConfig.model_validate(
        {"tts": {"provider": "voicevox", "voices": {"en": {"provider": "openai"}}}}
    )
    assert voicevox_only.tts.japanese and not voicevox_only.tts.voices["en"].japanese


def test_auto_brain_is_offline_without_keys_and_cloud_for_keyless_local_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from appliance.assembly.brains import choose_brain_kind

    for var in ("OPENAI_API_KEY", "GEMINI_API_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    assert choose_brain_kind(AppConfig.model_validate({"llm": {"provider": "gemini"}})) == "offline"
    local = {
        "stt": {"base_url": "http://127.0.0.1:9000/v1"},
        "llm": {"base_url": "http://127.0.0.1:11434/v1"},
        "tts": {"provider": "voicevox"},
    }
    assert choose_brain_kind(AppConfig.model_validate(local)) == "cloud"


async def test_a_broken_camera_is_told_to_the_model_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "gone.jpg").write_bytes(b"\xff\xd8\xff")
    async with fake_providers(reply="Let me look. [vision:camera]") as fake:
        config = cloud_config(fake.url, llm__camera="file", llm__camera_image=str(tmp_path / "gone.jpg"))
        async with running_appliance(config) as (app, log):
            await app.brain.ensure()
            (tmp_path / "gone.jpg").unlink()  # the camera breaks after start
            await app.conversation.start_turn(Utterance(text="What do you see?"))
            done = await log.wait_for(TurnFinished)
    assert done.outcome == "done"
    second = fake.bodies("/v1/chat/completions")[1]["messages"]
    assert "could not take a picture" in second[-1]["content"]


def test_camera_choice_and_bad_images(tmp_path: Path) -> None:
    from appliance.agent.vision import CameraError, FileCamera, OpenCVCamera, make_camera

    assert isinstance(make_camera("file", tmp_path / "x.jpg"), FileCamera)
    assert isinstance(make_camera("opencv", None, "/dev/video9"), OpenCVCamera)
    with pytest.raises(ValueError, match="needs an image"):
        make_camera("file", None)
    text = tmp_path / "notes.txt"
    text.write_text("hello")

    async def grab() -> None:
        await FileCamera(text).capture()

    with pytest.raises(CameraError, match="neither JPEG nor PNG"):
        trio.run(grab)


async def test_a_failing_mcp_server_is_retried_without_harming_the_others(caplog: pytest.LogCaptureFixture) -> None:
    from appliance.agent.mcp_tools import MCPServerConnection, MCPService
    from appliance.agent.tools import ToolRegistry

    registry = ToolRegistry()
    good = MCPServerConnection("good", registry, command=[sys.executable, str(MCP_SERVER)], timeout=20)
    bad = MCPServerConnection("bad", registry, command=["/nonexistent/mcp-server"], timeout=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(MCPService([bad, good], max_backoff=0.2).run)
        with trio.fail_after(30):
            await good.connected.wait()
            while sum("MCP server bad failed" in r.getMessage() for r in caplog.records) < 2:
                await trio.sleep(0.05)  # failed, backed off, tried again
        running = sorted(t.name for t in registry)
        nursery.cancel_scope.cancel()
    assert running == ["add", "explode"]  # the good server served all along
    assert sorted(t.name for t in registry) == []  # and its tools left when it was shut down
