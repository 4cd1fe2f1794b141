"""Build the cloud brain's parts from configuration: every provider is chosen in TOML, none needs code.

``check_parts`` runs when the appliance is built (so a bad hook path or a missing key is a config error at
start, naming its TOML path); ``build_*`` run in a worker thread when the brain is first needed, because
the SDK imports are slow.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from appliance.settings.conversation import LLMConfig, STTConfig, TTSConfig, TTSVoiceConfig

log = logging.getLogger(__name__)

KEYLESS_TTS = {"espeak", "voicevox", "aivisspeech", "http"}


def secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def key_for(provider: str, explicit: Any) -> str | None:
    """The configured key, else the provider's usual environment variable / systemd credential."""
    if explicit is not None and explicit.get_secret_value():
        return explicit.get_secret_value()
    from appliance.settings.secrets import PROVIDER_KEYS, lookup_secret

    names = PROVIDER_KEYS.get(provider)
    return lookup_secret(names[0], names[1], os.environ) if names else None


def key_variable(provider: str) -> str:
    from appliance.settings.secrets import PROVIDER_KEYS

    return PROVIDER_KEYS.get(provider, ("OPENAI_API_KEY",))[0]


def needs_key(section: str, provider: str, base_url: str | None) -> bool:
    """Keyless: local TTS engines, and any provider reached through a ``base_url`` (a local compatible
    server or a proxy usually holds the key itself)."""
    if section == "tts" and provider in KEYLESS_TTS:
        return False
    return not base_url


def tts_ready(tts: TTSConfig) -> bool:
    """Whether the configured voice can speak (it needs no key, or has one)."""
    return tts.provider != "espeak" and (
        not needs_key("tts", tts.provider, tts.base_url) or key_for(tts.provider, tts.api_key) is not None
    )


def missing_keys(stt: STTConfig, llm: LLMConfig, tts: TTSConfig) -> list[str]:
    problems = []
    sections: list[tuple[str, str, Any]] = [("stt", "stt", stt), ("llm", "llm", llm), ("tts", "tts", tts)]
    sections += [("tts", f"tts.voices.{lang}", v) for lang, v in tts.voices.items()]
    for kind, path, section in sections:
        if needs_key(kind, section.provider, section.base_url) and key_for(section.provider, section.api_key) is None:
            problems.append(
                f"{path}.api_key: the cloud brain needs an API key for {section.provider} "
                f"(set {key_variable(section.provider)} or APPLIANCE_{path.upper().replace('.', '__')}__API_KEY)"
            )
    return problems


# --- speech to text -----------------------------------------------------------------------------------


def build_stt(cfg: STTConfig) -> Any:
    key = key_for(cfg.provider, cfg.api_key)
    recognizer: Any
    if cfg.provider == "google":
        from appliance.providers.stt.google import GoogleRecognizer

        recognizer = GoogleRecognizer(
            key,
            cfg.language,
            cfg.base_url,
            cfg.timeout,
            None if cfg.model == STTConfig().model else cfg.model,
            cfg.alternative_languages,
        )
    elif cfg.provider == "azure":
        from appliance.providers.stt.azure import AzureRecognizer

        recognizer = AzureRecognizer(key, cfg.region, cfg.language, cfg.base_url, cfg.timeout)
    elif cfg.provider == "amivoice":
        from appliance.providers.stt.amivoice import AmiVoiceRecognizer

        recognizer = AmiVoiceRecognizer(key, cfg.engine, cfg.base_url, cfg.timeout)
    else:
        from appliance.providers.stt.openai import OpenAIRecognizer

        recognizer = OpenAIRecognizer(cfg.model, key, cfg.base_url, cfg.timeout, cfg.language)
    preprocess = None
    if cfg.preprocess:
        from appliance.hooks import load_hook

        preprocess = load_hook(cfg.preprocess, "stt.preprocess")
    if cfg.speaker_gate_model is not None:
        from appliance.providers.stt.speaker_gate import SherpaEmbedder, SpeakerGate

        gate = SpeakerGate.enroll(
            SherpaEmbedder(cfg.speaker_gate_model), cfg.speaker_gate_enroll, cfg.speaker_gate_threshold
        )
        preprocess = chain_audio_hooks(preprocess, gate) if preprocess else gate
    if preprocess or cfg.postprocess:
        from appliance.hooks import HookedRecognizer, load_hook

        recognizer = HookedRecognizer(
            recognizer, preprocess, load_hook(cfg.postprocess, "stt.postprocess") if cfg.postprocess else None
        )
    return recognizer


def chain_audio_hooks(first: Any, second: Any) -> Any:
    """The user's pre-process hook, then the speaker gate (each may drop the utterance with None)."""
    from appliance.hooks import call_hook

    async def both(clip: Any) -> Any:
        clip = await call_hook(first, clip)
        return None if clip is None else await call_hook(second, clip)

    return both


# --- language model -----------------------------------------------------------------------------------


def build_llm(cfg: LLMConfig) -> Any:
    key = key_for(cfg.provider, cfg.api_key)
    args = (cfg.model_name, key, cfg.base_url, cfg.timeout, cfg.temperature, cfg.max_tokens)
    if cfg.provider == "anthropic":
        from appliance.providers.llm.anthropic import AnthropicChat

        return AnthropicChat(*args, web_search=cfg.web_search)
    if cfg.provider == "gemini":
        from appliance.providers.llm.gemini import GeminiChat

        return GeminiChat(*args, web_search=cfg.web_search)
    if cfg.provider == "dify":
        from appliance.providers.llm.dify import DifyChat

        assert cfg.base_url is not None
        return DifyChat(key, cfg.base_url, cfg.timeout, cfg.user, cfg.inputs)
    from appliance.providers.llm.openai import OpenAIChat

    return OpenAIChat(*args, web_search=cfg.web_search)


# --- text to speech -----------------------------------------------------------------------------------

_DEFAULT_VOICE = {"azure": "en-US-JennyNeural"}


def build_voice(cfg: TTSVoiceConfig, local_voice: Any) -> Any:
    key = key_for(cfg.provider, cfg.api_key)
    voice = cfg.voice if cfg.voice != "alloy" or cfg.provider == "openai" else _DEFAULT_VOICE.get(cfg.provider, "")
    if cfg.provider == "espeak":
        return local_voice
    if cfg.provider in ("voicevox", "aivisspeech"):
        from appliance.providers.tts.voicevox import VoicevoxSynthesizer

        return VoicevoxSynthesizer(
            cfg.base_url,
            cfg.speaker,
            name=f"{cfg.provider}-tts",
            timeout=cfg.timeout,
            speed=cfg.speed,
            pitch=cfg.pitch,
            intonation=cfg.intonation,
            api_key=key,
        )
    if cfg.provider == "azure":
        from appliance.providers.tts.azure import AzureSynthesizer

        return AzureSynthesizer(key, cfg.region, voice, cfg.language or "en-US", cfg.base_url, cfg.timeout, cfg.speed)
    if cfg.provider == "google":
        from appliance.providers.tts.google import GoogleSynthesizer

        return GoogleSynthesizer(key, voice or None, cfg.language or "en-US", cfg.base_url, cfg.timeout, cfg.speed)
    if cfg.provider == "http":
        from appliance.providers.tts.http_template import HTTPTemplateSynthesizer

        assert cfg.url is not None
        return HTTPTemplateSynthesizer(
            cfg.url,
            method=cfg.method,
            headers=cfg.headers,
            body=cfg.body,
            audio_format=cfg.audio_format,
            sample_rate=cfg.sample_rate,
            audio_field=cfg.audio_field,
            voice=voice,
            language=cfg.language or "",
            speaker=str(cfg.speaker),
            timeout=cfg.timeout,
        )
    from appliance.providers.tts.openai import OpenAISynthesizer

    return OpenAISynthesizer(cfg.model, voice, key, cfg.base_url, cfg.timeout, cfg.speed, cfg.instructions)


def _preprocessors(tts: TTSConfig, voice: TTSVoiceConfig, katakana: Any) -> list[Any]:
    from appliance.providers.tts.preprocess import PatternReplacer, ReplacementRule

    steps: list[Any] = []
    if tts.replacements:
        steps.append(
            PatternReplacer(
                [ReplacementRule(r.pattern, r.replacement, r.regex, r.ignore_case) for r in tts.replacements]
            )
        )
    wants_katakana = voice.katakana if voice.katakana is not None else voice.japanese
    if wants_katakana:
        steps.append(katakana)
    return steps


def build_tts(cfg: TTSConfig, local_voice: Any, llm: Any = None) -> tuple[Any, dict[str, Any]]:
    """The default voice and one per language, each wrapped in its text preprocessors."""
    from appliance.providers.tts.preprocess import (
        KatakanaConverter,
        PreprocessingSynthesizer,
        llm_katakana,
        load_dictionary,
    )

    dictionary = load_dictionary(cfg.katakana_dictionary) if cfg.katakana_dictionary else None
    katakana = KatakanaConverter(dictionary, llm_katakana(llm) if cfg.katakana_llm and llm is not None else None)

    def wrap(voice_cfg: TTSVoiceConfig) -> Any:
        synth = build_voice(voice_cfg, local_voice)
        steps = _preprocessors(cfg, voice_cfg, katakana)
        return PreprocessingSynthesizer(synth, steps) if steps else synth

    return wrap(cfg), {lang.lower(): wrap(v) for lang, v in cfg.voices.items()}


def check_parts(stt: STTConfig, llm: LLMConfig, tts: TTSConfig) -> list[str]:
    """What can be checked of the providers without network: keys, hook paths, dictionaries (the agent's
    tools and guardrails: :func:`appliance.agent.factory.check_parts`)."""
    from appliance.hooks import HookError, load_hook
    from appliance.providers.tts.preprocess import load_dictionary

    problems = missing_keys(stt, llm, tts)
    hooks = [("stt.preprocess", stt.preprocess), ("stt.postprocess", stt.postprocess), ("llm.on_finish", llm.on_finish)]
    for path, value in hooks:
        if value:
            try:
                load_hook(value, path)
            except HookError as exc:
                problems.append(str(exc))
    if tts.katakana_dictionary:
        try:
            load_dictionary(tts.katakana_dictionary)
        except ValueError as exc:
            problems.append(f"tts.katakana_dictionary: {exc}")
    if stt.speaker_gate_model is not None:
        try:
            import sherpa_onnx  # noqa: F401
        except ImportError:
            problems.append(
                "stt.speaker_gate_model: the speaker gate needs sherpa-onnx (pip install 'appliance[speaker]')"
            )
        if not stt.speaker_gate_model.is_file():
            problems.append(f"stt.speaker_gate_model: {stt.speaker_gate_model} does not exist")
        for index, recording in enumerate(stt.speaker_gate_enroll):
            if not recording.is_file():
                problems.append(f"stt.speaker_gate_enroll[{index}]: {recording} does not exist")
    if llm.mcp_servers:
        try:
            import mcp  # noqa: F401
        except ImportError:
            problems.append("llm.mcp_servers: the mcp package is not installed (pip install 'appliance[mcp]')")
    if llm.camera == "file" and llm.camera_image is not None and not llm.camera_image.is_file():
        problems.append(f"llm.camera_image: {llm.camera_image} does not exist")
    return problems
