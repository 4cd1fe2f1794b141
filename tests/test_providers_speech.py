"""Every speech-to-text and text-to-speech provider against its fake: a happy request, a bad key, a rate
limit, a malformed answer; plus hooks, preprocessors and the HTTP template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.audio.base import AudioClip
from appliance.errors import ProviderBadReply, ProviderRejected, ProviderUnavailable
from appliance.hooks import HookedRecognizer, HookError, load_hook
from appliance.providers.stt.amivoice import AmiVoiceRecognizer
from appliance.providers.stt.azure import AzureRecognizer
from appliance.providers.stt.google import GoogleRecognizer
from appliance.providers.stt.openai import OpenAIRecognizer
from appliance.providers.tts.azure import AzureSynthesizer
from appliance.providers.tts.google import GoogleSynthesizer
from appliance.providers.tts.http_template import HTTPTemplateSynthesizer
from appliance.providers.tts.openai import OpenAISynthesizer
from appliance.providers.tts.preprocess import (
    KatakanaConverter,
    PatternReplacer,
    PreprocessingSynthesizer,
    ReplacementRule,
    load_dictionary,
)
from appliance.providers.tts.voicevox import VoicevoxSynthesizer
from tests.fakes.providers import KEY, FakeProviders, fake_providers

SPEECH = AudioClip((np.sin(np.arange(16000) / 5) * 8000).astype(np.int16), 16000)

STT = ["openai", "google", "azure", "amivoice"]
TTS = ["openai", "voicevox", "aivisspeech", "azure", "google", "http"]


def make_stt(kind: str, url: str, key: str = KEY) -> Any:
    if kind == "openai":
        return OpenAIRecognizer("whisper-1", key, f"{url}/v1", timeout=5)
    if kind == "google":
        return GoogleRecognizer(key, "en", url, timeout=5)
    if kind == "azure":
        return AzureRecognizer(key, language="en-US", base_url=url, timeout=5)
    return AmiVoiceRecognizer(key, base_url=f"{url}/v1", timeout=5)


def make_tts(kind: str, url: str, key: str = KEY) -> Any:
    if kind == "openai":
        return OpenAISynthesizer("tts-1", "alloy", key, f"{url}/v1", timeout=5)
    if kind in ("voicevox", "aivisspeech"):
        # The local engines have no auth; the hosted AivisSpeech one takes a bearer key.
        return VoicevoxSynthesizer(
            url, 3, name=f"{kind}-tts", timeout=5, api_key=key if kind == "aivisspeech" else None
        )
    if kind == "azure":
        return AzureSynthesizer(key, voice="ja-JP-NanamiNeural", language="ja-JP", base_url=url, timeout=5)
    if kind == "google":
        return GoogleSynthesizer(key, "en-US-Neural2-C", "en-US", url, timeout=5)
    return HTTPTemplateSynthesizer(
        f"{url}/tts", headers={"x-api-key": key}, body='{"text": "{text}", "voice": "{voice}"}', voice="robo", timeout=5
    )


def stt_behaviour(fake: FakeProviders, kind: str) -> Any:
    return (
        fake.stt
        if kind == "openai"
        else fake.behaviours[{"google": "google_stt", "azure": "azure_stt"}.get(kind, kind)]
    )


def tts_behaviour(fake: FakeProviders, kind: str) -> Any:
    names = {
        "voicevox": "voicevox",
        "aivisspeech": "voicevox",
        "azure": "azure_tts",
        "google": "google_tts",
        "http": "http_tts",
    }
    return fake.tts if kind == "openai" else fake.behaviours[names[kind]]


# --- speech to text -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STT)
async def test_stt_transcribes(kind: str) -> None:
    async with fake_providers(transcript="Turn on the light") as fake:
        stt = make_stt(kind, fake.url)
        text = await stt.transcribe(SPEECH, "en")
        await stt.aclose()
    assert text == "Turn on the light"
    assert fake.requests[-1].body["bytes"] >= len(SPEECH.samples) * 2  # the whole utterance went up


@pytest.mark.parametrize("kind", STT)
async def test_stt_bad_key_is_rejected(kind: str) -> None:
    async with fake_providers() as fake:
        if kind == "openai":
            fake.stt.status = 401
        stt = make_stt(kind, fake.url, key="nope")
        with pytest.raises(ProviderRejected) as info:
            await stt.transcribe(SPEECH)
        await stt.aclose()
    assert info.value.provider == stt.name


@pytest.mark.parametrize("kind", STT)
async def test_stt_rate_limit(kind: str) -> None:
    async with fake_providers() as fake:
        b = stt_behaviour(fake, kind)
        b.status, b.retry_after = 429, 3
        stt = make_stt(kind, fake.url)
        with pytest.raises(ProviderUnavailable) as info:
            await stt.transcribe(SPEECH)
        await stt.aclose()
    assert info.value.retry_after == 3


@pytest.mark.parametrize("kind", ["google", "azure", "amivoice"])
async def test_stt_malformed_answer(kind: str) -> None:
    async with fake_providers() as fake:
        stt_behaviour(fake, kind).malformed = True
        stt = make_stt(kind, fake.url)
        with pytest.raises(ProviderBadReply):
            await stt.transcribe(SPEECH)
        await stt.aclose()


async def test_stt_language_reaches_each_service_in_its_own_form() -> None:
    async with fake_providers() as fake:
        for kind in ("google", "azure"):
            stt = make_stt(kind, fake.url)
            await stt.transcribe(SPEECH, "ja")
            await stt.aclose()
    assert fake.bodies("/v1/speech:recognize")[-1]["config"]["languageCode"] == "ja-JP"
    assert fake.bodies("/speech/recognition/conversation/cognitiveservices/v1")[-1]["language"] == "ja-JP"


def _drop_quiet(clip: AudioClip) -> AudioClip | None:
    return None if np.abs(clip.samples).max() < 100 else clip


async def test_stt_hooks_gate_audio_and_rewrite_text() -> None:
    async with fake_providers(transcript="hello robo") as fake:
        stt = HookedRecognizer(make_stt("google", fake.url), _drop_quiet, lambda text: text.replace("robo", "Robo"))
        assert await stt.transcribe(AudioClip.silence(0.5)) == ""  # dropped before it cost a request
        assert len(fake.requests) == 0
        assert await stt.transcribe(SPEECH) == "hello Robo"
        await stt.aclose()


def test_hook_paths_are_checked() -> None:
    assert load_hook("json:dumps") is json.dumps
    with pytest.raises(HookError, match="package.module:function"):
        load_hook("json.dumps")
    with pytest.raises(HookError, match="no 'nothing'"):
        load_hook("json:nothing")


# --- text to speech -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TTS)
async def test_tts_synthesizes(kind: str) -> None:
    async with fake_providers() as fake:
        tts = make_tts(kind, fake.url)
        clip = await tts.synthesize("Good morning, it is sunny & warm.")
        await tts.aclose()
    assert clip.duration > 0.1 and np.abs(clip.samples).max() > 1000
    assert "sunny & warm" in json.dumps(fake.requests[-1].body) or "sunny &amp; warm" in json.dumps(
        fake.requests[-1].body
    )


@pytest.mark.parametrize("kind", ["openai", "aivisspeech", "azure", "google", "http"])
async def test_tts_bad_key_is_rejected(kind: str) -> None:
    async with fake_providers() as fake:
        if kind == "openai":
            fake.tts.status = 401
        tts = make_tts(kind, fake.url, key="nope")
        with pytest.raises(ProviderRejected):
            await tts.synthesize("Hello there.")
        await tts.aclose()


@pytest.mark.parametrize("kind", TTS)
async def test_tts_rate_limit(kind: str) -> None:
    async with fake_providers() as fake:
        b = tts_behaviour(fake, kind)
        b.status, b.retry_after = 429, 2
        tts = make_tts(kind, fake.url)
        with pytest.raises(ProviderUnavailable) as info:
            await tts.synthesize("Hello there.")
        await tts.aclose()
    assert info.value.retry_after == 2


@pytest.mark.parametrize("kind", ["voicevox", "azure", "google", "http"])
async def test_tts_malformed_audio(kind: str) -> None:
    async with fake_providers() as fake:
        tts_behaviour(fake, kind).malformed = True
        tts = make_tts(kind, fake.url)
        with pytest.raises(ProviderBadReply):
            await tts.synthesize("Hello there.")
        await tts.aclose()


async def test_tts_cut_stream_is_a_bad_reply() -> None:
    async with fake_providers() as fake:
        fake.behaviours["azure_tts"].cut = "abort"
        tts = make_tts("azure", fake.url)
        with pytest.raises(ProviderBadReply):
            await tts.synthesize("A sentence long enough to come back in several pieces of audio.")
        await tts.aclose()


async def test_voicevox_uses_the_style_and_applies_speed_to_the_query() -> None:
    async with fake_providers() as fake:
        tts = VoicevoxSynthesizer(fake.url, 8, speed=1.3, pitch=0.05)
        await tts.synthesize("こんにちは")
        await tts.aclose()
    query = fake.bodies("/synthesis")[-1]
    assert fake.bodies("/audio_query")[-1] == {"text": "こんにちは", "speaker": "8"}
    assert query["speedScale"] == 1.3 and query["pitchScale"] == 0.05


async def test_http_template_escapes_text_and_fills_the_url() -> None:
    async with fake_providers() as fake:
        post = make_tts("http", fake.url)
        await post.synthesize('He said "hi" \\ bye')
        get = HTTPTemplateSynthesizer(f"{fake.url}/tts?text={{text}}&voice={{voice}}", method="GET", voice="a b")
        await get.synthesize("what & why?")
        await post.aclose()
        await get.aclose()
    assert fake.bodies("/tts")[0] == {"text": 'He said "hi" \\ bye', "voice": "robo"}
    assert fake.bodies("/tts")[1] == {"text": "what & why?", "voice": "a b"}


def test_http_template_body_must_be_json_when_it_says_so() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        HTTPTemplateSynthesizer("http://127.0.0.1:1/tts", body='{"text": {text}}')


# --- preprocessors --------------------------------------------------------------------------------


class _Echo:
    name = "echo"

    def __init__(self) -> None:
        self.said: list[str] = []

    async def synthesize(self, text: str) -> AudioClip:
        self.said.append(text)
        return AudioClip.silence(0.1)

    async def aclose(self) -> None:
        return None


async def test_replacements_then_katakana() -> None:
    echo = _Echo()
    tts = PreprocessingSynthesizer(
        echo,
        [
            PatternReplacer([ReplacementRule("Robo", "ロボ"), ReplacementRule(r"(\d+)%", r"\1パーセント", regex=True)]),
            KatakanaConverter({"sensor": "センサー"}),
        ],
    )
    await tts.synthesize("Roboの sensor は 80% で、AI と Raspberry Pi を使います。zyzzyva")
    assert echo.said == ["ロボの センサー は 80パーセント で、エーアイ と ラズベリー パイ を使います。zyzzyva"]


async def test_katakana_asks_the_fallback_once_per_unknown_word() -> None:
    asked: list[list[str]] = []

    async def fallback(words: list[str]) -> dict[str, str]:
        asked.append(words)
        return {"Kubernetes": "クバネティス"}

    kana = KatakanaConverter(fallback=fallback)
    assert await kana.process("Kubernetes です") == "クバネティス です"
    assert await kana.process("Kubernetes です") == "クバネティス です"
    assert asked == [["Kubernetes"]]


def test_katakana_dictionary_files(tmp_path: Path) -> None:
    tsv = tmp_path / "words.tsv"
    tsv.write_text("# mine\nDocker\tドッカー\n", encoding="utf-8")
    assert load_dictionary(tsv) == {"docker": "ドッカー"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("Docker ドッカー\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv:1"):
        load_dictionary(bad)


async def test_azure_and_http_speech_stream_in_pieces() -> None:
    from contextlib import aclosing

    async with fake_providers(seconds_per_char=0.05) as fake:
        for kind in ("azure", "http"):
            tts = make_tts(kind, fake.url)
            async with aclosing(tts.synthesize_stream("A sentence long enough to arrive in several pieces.")) as pieces:
                clips = [clip async for clip in pieces]
            whole = await tts.synthesize("A sentence long enough to arrive in several pieces.")
            await tts.aclose()
            assert len(clips) > 1, kind  # playable before the whole answer arrived
            assert sum(len(c.samples) for c in clips) == len(whole.samples)


def test_wav_stream_decoder_copes_with_any_cut() -> None:
    from appliance.providers.tts._audio import WavStreamDecoder
    from tests.fakes.providers import wav_bytes

    data = wav_bytes(0.1, 16000)
    for step in (1, 7, 44, 45, 1000):
        decoder = WavStreamDecoder("x")
        clips = [c for i in range(0, len(data), step) for c in decoder.feed(data[i : i + step])] + decoder.finish()
        assert sum(len(c.samples) for c in clips) == 1600 and clips[0].sample_rate == 16000
    with pytest.raises(ProviderBadReply, match="header"):
        decoder = WavStreamDecoder("x")
        decoder.feed(data[:30])
        decoder.finish()
    with pytest.raises(ProviderBadReply, match="not a WAV"):
        WavStreamDecoder("x").feed(b"<html>nope</html>")


def test_pcm_stream_decoder_sniffs_a_wav_even_from_tiny_pieces() -> None:
    """Raw PCM was asked for; a compatible server may answer WAV, and the first piece may be a byte long."""
    from appliance.providers.tts._audio import WavStreamDecoder
    from tests.fakes.providers import wav_bytes

    wav = wav_bytes(0.1, 16000)
    pcm = bytes(range(256)) * 10  # 1280 samples of raw s16le
    for step in (1, 3, 4, 5, 1000):
        decoder = WavStreamDecoder("x", "pcm", 24_000)
        clips = [c for i in range(0, len(wav), step) for c in decoder.feed(wav[i : i + step])] + decoder.finish()
        assert sum(len(c.samples) for c in clips) == 1600 and clips[0].sample_rate == 16000, step
        decoder = WavStreamDecoder("x", "pcm", 24_000)
        clips = [c for i in range(0, len(pcm), step) for c in decoder.feed(pcm[i : i + step])] + decoder.finish()
        assert sum(len(c.samples) for c in clips) == 1280 and clips[0].sample_rate == 24_000, step
    decoder = WavStreamDecoder("x", "pcm", 24_000)
    assert decoder.feed(b"\x01\x00") == []  # too short to tell a header from audio yet
    assert [len(c.samples) for c in decoder.finish()] == [1]


async def test_http_providers_warm_their_connection_once() -> None:
    async with fake_providers() as fake:
        parts = [
            make_stt("google", fake.url),
            make_tts("voicevox", fake.url),
            make_tts("azure", fake.url),
            make_tts("http", fake.url),
        ]
        for part in parts:
            sent: list[str] = []

            async def count(request: Any, sent: list[str] = sent) -> None:
                sent.append(request.method)

            part._client.event_hooks["request"] = [count]
            await part.warm()
            await part.warm()  # still warm: no second request
            await part.synthesize("Hi there.") if hasattr(part, "synthesize") else await part.transcribe(SPEECH)
            await part.warm()  # just used: still warm
            await part.aclose()
            assert sent[0] == "HEAD" and sent.count("HEAD") == 1, (part.name, sent)


def test_say_uses_the_configured_voice_and_the_lang_tag(tmp_path: Path) -> None:
    """``appliance say`` from a TOML file alone, against the fakes in their own process."""
    import subprocess
    import sys

    from appliance.audio.convert import read_wav

    root = Path(__file__).resolve().parent.parent
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.providers"], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert fake.stdout is not None
        url = fake.stdout.readline().strip()
        config = tmp_path / "appliance.toml"
        config.write_text(
            f'[tts]\nprovider = "http"\nurl = "{url}/tts"\nbody = \'{{"text": "{{text}}"}}\'\n'
            f'[tts.voices.ja]\nprovider = "voicevox"\nbase_url = "{url}"\nspeaker = 5\n',
            encoding="utf-8",
        )
        outputs = []
        for line in ("Hello from the template voice.", "[lang:ja] こんにちは"):
            out = tmp_path / f"say{len(outputs)}.wav"
            result = subprocess.run(
                [sys.executable, "-m", "appliance", "--config", str(config), "say", line, "--output", str(out)],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            outputs.append(read_wav(out))
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    assert outputs[0].sample_rate == 22050  # the HTTP template engine's WAV
    assert outputs[1].sample_rate == 24000  # VOICEVOX, chosen by [lang:ja]


class _SpectrumEmbedder:
    """Stands in for the ONNX model in tests: a voice is its coarse spectrum."""

    def embed(self, clip: AudioClip) -> Any:
        power = np.abs(np.fft.rfft(clip.samples.astype(np.float64)))
        return np.array([band.mean() for band in np.array_split(power, 32)], dtype=np.float32)


def _tone(freq: float, seconds: float = 1.0) -> AudioClip:
    t = np.arange(int(16000 * seconds)) / 16000
    return AudioClip((np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16), 16000)


async def test_speaker_gate_passes_the_enrolled_voice_only(tmp_path: Path) -> None:
    from appliance.audio.convert import write_wav
    from appliance.providers.stt.speaker_gate import SpeakerGate

    enrolled = tmp_path / "me.wav"
    write_wav(enrolled, _tone(300))
    gate = SpeakerGate.enroll(_SpectrumEmbedder(), [enrolled], threshold=0.8)
    async with fake_providers(transcript="it is me") as fake:
        stt = HookedRecognizer(make_stt("google", fake.url), gate)
        assert await stt.transcribe(_tone(300)) == "it is me"
        assert await stt.transcribe(_tone(3000)) == ""  # someone else: dropped before any request
        assert await stt.transcribe(_tone(3000, 0.3)) == "it is me"  # too short to judge: let through
        await stt.aclose()
    assert len(fake.bodies("/v1/speech:recognize")) == 2


def test_speaker_gate_config_is_checked(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from appliance.config import AppConfig
    from appliance.providers.factory import check_parts

    with pytest.raises(ValidationError, match="speaker_gate_enroll"):
        AppConfig.model_validate({"stt": {"speaker_gate_model": str(tmp_path / "m.onnx")}})
    config = AppConfig.model_validate(
        {
            "stt": {
                "api_key": "k",
                "speaker_gate_model": str(tmp_path / "m.onnx"),
                "speaker_gate_enroll": [str(tmp_path / "me.wav")],
            },
            "llm": {"api_key": "k"},
            "tts": {"api_key": "k"},
        }
    )
    problems = "\n".join(check_parts(config.stt, config.llm, config.tts))
    assert "m.onnx does not exist" in problems and "speaker_gate_enroll[0]" in problems
