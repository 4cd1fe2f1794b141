"""Speech that breaks off: every streamed TTS provider's stream reset at the start, inside the WAV header
and inside the audio. The turn ends with a spoken line in the local voice (the cloud's is what failed), and
the turn's record says exactly what was heard: the part of the sentence that played, then the line."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.audio.playback import MemorySink
from appliance.events import SentenceStarted, TurnFinished
from appliance.turns import Utterance
from tests.fakes.providers import KEY, fake_providers
from tests.harness import cloud_config, running_appliance

FIRST = "Here is the first sentence of my answer."
SECOND = "And this second one breaks off in the middle of its words."
LINE = "Sorry, I lost my connection."
ERROR = "Sorry, I couldn't answer that. Please try again."

PROVIDERS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": ("tts", {}),
    "azure": ("azure_tts", {"provider": "azure", "voice": "en-US-JennyNeural", "language": "en-US"}),
    "voicevox": ("voicevox", {"provider": "voicevox", "speaker": 3}),
    "http": ("http_tts", {"provider": "http", "body": '{"text": "{text}", "voice": "{voice}"}'}),
}


def tts_config(kind: str, url: str) -> dict[str, Any]:
    _, settings = PROVIDERS[kind]
    base = {"openai": f"{url}/v1", "azure": url, "voicevox": url, "http": None}[kind]
    section = {"api_key": KEY, **settings}
    if base:
        section["base_url"] = base
    if kind == "http":
        section["url"] = f"{url}/tts"
    return section


@pytest.mark.parametrize("kind", list(PROVIDERS))
@pytest.mark.parametrize("offset", [0, 20, 6000])  # nothing, mid-header (WAV) / first bytes, mid-audio
async def test_a_sentence_cut_mid_speech_ends_with_the_line_and_the_record_says_what_was_heard(
    kind: str, offset: int
) -> None:
    async with fake_providers(reply=f"{FIRST} {SECOND}", seconds_per_char=0.06) as fake:
        behaviour = fake.tts if kind == "openai" else fake.behaviours[PROVIDERS[kind][0]]
        behaviour.cut_at_byte, behaviour.cut_skip = offset, 1  # the first sentence's speech comes whole
        config = cloud_config(fake.url, **{f"tts__{k}": v for k, v in tts_config(kind, fake.url).items()})
        async with running_appliance(config, sink=MemorySink(realtime=False)) as (app, log):
            await app.conversation.start_turn(Utterance(text="Tell me something"))
            first = await log.wait_for(SentenceStarted)
            done = await log.wait_for(TurnFinished)
    assert first.text == FIRST
    assert done.outcome == "failed", done
    said, _, line = done.spoken.rpartition(" " + LINE)
    assert _ and line == "", done.spoken  # the turn ends with the line: something had been heard
    assert said.startswith(FIRST)
    rest = said[len(FIRST) :].strip()
    # Of the broken sentence, only the words that played: nothing, or a cut-off start of it.
    assert rest == "" or (rest.endswith("…") and SECOND.startswith(rest[:-1])), rest
    if offset == 6000 and kind != "voicevox":
        assert rest, "about 0.1 s of speech had played"
    spoken_events = [e.text for e in log.of(SentenceStarted)]
    assert spoken_events[0] == FIRST and spoken_events[-1] == LINE


@pytest.mark.parametrize("kind", list(PROVIDERS))
async def test_speech_that_fails_before_a_word_says_the_error_line_instead(kind: str) -> None:
    async with fake_providers(reply=FIRST, seconds_per_char=0.06) as fake:
        behaviour = fake.tts if kind == "openai" else fake.behaviours[PROVIDERS[kind][0]]
        behaviour.cut_at_byte = 0
        config = cloud_config(fake.url, **{f"tts__{k}": v for k, v in tts_config(kind, fake.url).items()})
        async with running_appliance(config, sink=MemorySink(realtime=False)) as (app, log):
            await app.conversation.start_turn(Utterance(text="Tell me something"))
            done = await log.wait_for(TurnFinished)
    assert done.outcome == "failed" and done.spoken == ERROR
