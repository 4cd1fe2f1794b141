from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from appliance.settings_base import Section

DEFAULT_SYSTEM_PROMPT = (
    "You are {name}, a small talking robot. Answer in one to three short spoken sentences, "
    "without lists or markdown. You may start a sentence with a face tag such as [face:joy], "
    "[face:angry], [face:sorrow], [face:fun] or [face:surprised] when it fits."
)


class OpenAIServerConfig(Section):
    """One OpenAI-compatible server (Ollama, LiteLLM, vLLM, LocalAI, Speaches, ...) for every role.

    Its ``base_url`` is given to each of ``[stt]``, ``[llm]``, ``[tts]`` (and ``[tts.voices.*]``) whose
    provider is ``openai`` and that names no ``base_url`` of its own.
    """

    base_url: str | None = Field(
        default=None, description="e.g. http://192.168.1.10:4000/v1; a section's own base_url wins"
    )


def share_openai_server(data: dict[str, Any]) -> dict[str, Any]:
    """The raw config with ``openai.base_url`` copied into each OpenAI section that has none (before validation)."""
    shared = data.get("openai")
    url = shared.get("base_url") if isinstance(shared, dict) else None
    if not isinstance(url, str) or not url:
        return data

    def inherit(section: Any) -> Any:
        if isinstance(section, dict) and section.get("provider", "openai") == "openai" and not section.get("base_url"):
            return {**section, "base_url": url}
        return section

    data = dict(data)
    for name in ("stt", "llm", "tts"):
        section = inherit(data.get(name, {}))
        if name == "tts" and isinstance(section, dict) and isinstance(section.get("voices"), dict):
            section = {**section, "voices": {lang: inherit(voice) for lang, voice in section["voices"].items()}}
        data[name] = section
    return data


class STTConfig(Section):
    provider: Literal["openai", "google", "azure", "amivoice"] = Field(
        default="openai", description="openai also covers any OpenAI-compatible server via base_url"
    )
    model: str = Field(default="gpt-4o-mini-transcribe", description="openai model; google: optional model name")
    base_url: str | None = Field(default=None, description="an OpenAI-compatible server, e.g. http://pc:8000/v1")
    api_key: SecretStr | None = Field(
        default=None, description="default: OPENAI_API_KEY / GOOGLE_API_KEY / AZURE_SPEECH_KEY / AMIVOICE_API_KEY"
    )
    language: str | None = Field(default=None, description="ISO-639-1 hint, e.g. 'en' or 'ja' (or 'ja-JP')")
    timeout: float = Field(default=15.0, gt=0)
    region: str | None = Field(default=None, description="azure: the Speech resource's region, e.g. 'japaneast'")
    engine: str = Field(default="-a-general", description="amivoice: the engine (grammar file), e.g. '-a-general'")
    alternative_languages: list[str] = Field(default_factory=list, description="google: other languages to expect")
    preprocess: str | None = Field(
        default=None,
        description="'module:function' (AudioClip) -> AudioClip | None, run before recognition; "
        "None drops the utterance (noise gate, speaker gate)",
    )
    postprocess: str | None = Field(default=None, description="'module:function' (text) -> text, run after recognition")
    speaker_gate_model: Path | None = Field(
        default=None, description="ONNX speaker-embedding model (sherpa-onnx): only enrolled voices are heard"
    )
    speaker_gate_enroll: list[Path] = Field(default_factory=list, description="WAV recordings of the enrolled voices")
    speaker_gate_threshold: float = Field(default=0.5, ge=-1, le=1, description="cosine similarity to pass")

    @model_validator(mode="after")
    def _needs_region(self) -> STTConfig:
        if self.provider == "azure" and not (self.region or self.base_url):
            raise ValueError("stt.region is required for azure (or give base_url)")
        if self.speaker_gate_model is not None and not self.speaker_gate_enroll:
            raise ValueError("stt.speaker_gate_enroll needs at least one recording of the enrolled voice")
        return self


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}", re.IGNORECASE)
SearchSource = Literal["web", "x"]
_X_HANDLE = re.compile(r"@?[A-Za-z0-9_]{1,15}")


class ToolConfig(Section):
    """A tool declared in the config: a Python function (``function``), an HTTP endpoint (``url``), or one
    that comes with the firmware (``builtin``)."""

    name: str | None = Field(default=None, description="default: the function's name (required for url tools)")
    description: str = ""
    function: str | None = Field(default=None, description="'package.module:function'")
    url: str | None = Field(default=None, description="POSTed the arguments as JSON; the reply body is the result")
    builtin: Literal["read_web_page", "generate_image", "grok_search"] | None = Field(
        default=None, description="a tool that comes with the firmware"
    )
    allow_private: bool = Field(
        default=False, description="read_web_page: also reach loopback, private and link-local addresses"
    )
    allow_networks: list[str] = Field(
        default_factory=list, description="read_web_page: CIDRs reachable besides public ones"
    )
    max_bytes: int = Field(default=2_000_000, ge=1024, le=50_000_000, description="read_web_page: body bytes read")
    max_chars: int = Field(
        default=8000, ge=100, le=200_000, description="read_web_page, grok_search: text given to the model"
    )
    model: str | None = Field(
        default=None,
        description="generate_image: the Gemini image model (gemini-2.5-flash-image); grok_search: grok-4.3",
    )
    base_url: str | None = Field(
        default=None, description="generate_image, grok_search: the API base (default: Google's / https://api.x.ai/v1)"
    )
    sources: list[SearchSource] = Field(
        default_factory=lambda: list[SearchSource](["web"]),
        description="grok_search: search the web, posts on X, or both",
    )
    allowed_domains: list[str] = Field(default_factory=list, description="grok_search: only these sites (at most 5)")
    excluded_domains: list[str] = Field(default_factory=list, description="grok_search: never these sites (at most 5)")
    allowed_x_handles: list[str] = Field(default_factory=list, description="grok_search: only these X accounts (10)")
    excluded_x_handles: list[str] = Field(default_factory=list, description="grok_search: never these accounts (10)")
    show_seconds: float = Field(default=20.0, gt=0, le=600, description="generate_image: how long the picture shows")
    parameters: dict[str, Any] | None = Field(default=None, description="url tools: JSON schema of the arguments")
    headers: dict[str, str] = Field(default_factory=dict)
    progress: str | None = Field(default=None, description="said while the tool is slow")
    timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_kind(self) -> ToolConfig:
        if sum(map(bool, (self.function, self.url, self.builtin))) != 1:
            raise ValueError("a tool needs exactly one of 'function', 'url' or 'builtin'")
        for network in self.allow_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"allow_networks: {network!r} is not a network such as 192.168.1.0/24") from None
        if self.url and not self.name:
            raise ValueError("a url tool needs a name")
        if self.parameters is not None and self.parameters.get("type") != "object":
            raise ValueError("parameters must be a JSON schema of type 'object'")
        return self

    @model_validator(mode="after")
    def _search_filters(self) -> ToolConfig:
        """xAI's limits, checked here so a mistake is a config error instead of a failed search mid-conversation."""
        filters = {
            "allowed_domains": "web",
            "excluded_domains": "web",
            "allowed_x_handles": "x",
            "excluded_x_handles": "x",
        }
        set_filters = [name for name in filters if getattr(self, name)]
        if self.builtin != "grok_search":
            if set_filters or self.sources != ["web"]:
                raise ValueError(f"{(set_filters or ['sources'])[0]} is for builtin = 'grok_search' only")
            return self
        if not self.sources:
            raise ValueError("sources: name at least one of 'web' and 'x'")
        for name in set_filters:
            if filters[name] not in self.sources:
                raise ValueError(f"{name} needs {filters[name]!r} in sources")
        for allowed, excluded, most in (
            ("allowed_domains", "excluded_domains", 5),
            ("allowed_x_handles", "excluded_x_handles", 10),
        ):
            if getattr(self, allowed) and getattr(self, excluded):
                raise ValueError(f"{allowed} and {excluded} cannot both be set (xAI takes one or the other)")
            for name in (allowed, excluded):
                if len(getattr(self, name)) > most:
                    raise ValueError(f"{name}: at most {most} (xAI's limit), got {len(getattr(self, name))}")
        for domain in self.allowed_domains + self.excluded_domains:
            if not _DOMAIN.fullmatch(domain):
                raise ValueError(f"{domain!r} is not a domain such as wikipedia.org (no scheme, path or spaces)")
        for handle in self.allowed_x_handles + self.excluded_x_handles:
            if not _X_HANDLE.fullmatch(handle):
                raise ValueError(f"{handle!r} is not an X handle such as @xai (letters, digits, _; at most 15)")
        return self


class MCPServerConfig(Section):
    name: str
    command: list[str] | None = Field(default=None, description="stdio: the server command and its arguments")
    url: str | None = Field(default=None, description="streamable HTTP endpoint, e.g. http://host:8000/mcp")
    env: dict[str, str] = Field(default_factory=dict, description="stdio: extra environment for the server")
    headers: dict[str, str] = Field(default_factory=dict, description="HTTP: extra headers (e.g. Authorization)")
    prefix: str = Field(default="", description="prepended to the server's tool names")
    tools: list[str] = Field(default_factory=list, description="only offer these tools (empty: all)")
    progress: str | None = None
    timeout: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerConfig:
        if bool(self.command) == bool(self.url):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of 'command' (stdio) or 'url' (HTTP)")
        return self


class GuardrailConfig(Section):
    target: Literal["request", "reply"] = "request"
    pattern: str | None = Field(default=None, description="a regular expression (case-insensitive)")
    hook: str | None = Field(default=None, description="'module:function' (text) -> None | str | Verdict")
    action: Literal["block", "rewrite"] = "block"
    message: str = Field(default="", description="block: what to say instead")
    replacement: str = Field(default="", description="rewrite: what the pattern is replaced by")

    @model_validator(mode="after")
    def _one_kind(self) -> GuardrailConfig:
        if bool(self.pattern) == bool(self.hook):
            raise ValueError("a guardrail needs exactly one of 'pattern' or 'hook'")
        if self.pattern and self.action == "block" and not self.message:
            raise ValueError("a blocking guardrail needs a 'message' to say instead")
        return self


class LLMConfig(Section):
    provider: Literal["openai", "anthropic", "gemini", "dify"] = Field(
        default="openai", description="openai also covers LiteLLM, Ollama, vLLM, LM Studio via base_url"
    )
    model: str | None = Field(default=None, description="default: gpt-4.1-mini / claude-haiku-4-5 / gemini-2.5-flash")
    base_url: str | None = Field(default=None, description="dify: the API base, e.g. https://api.dify.ai/v1")
    api_key: SecretStr | None = Field(
        default=None, description="default: OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY / DIFY_API_KEY"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=16, le=32768)
    timeout: float = Field(default=30.0, gt=0, description="seconds to the first token")
    user: str = Field(default="appliance", description="dify: the end-user id")
    inputs: dict[str, str] = Field(default_factory=dict, description="dify: app input variables")
    web_search: bool = Field(
        default=False,
        description="the provider's own web search: Gemini grounding with Google Search, Anthropic's web search "
        "tool, OpenAI's search models (e.g. gpt-4o-mini-search-preview) through web_search_options",
    )
    tools: list[ToolConfig] = Field(default_factory=list)
    mcp_servers: list[MCPServerConfig] = Field(default_factory=list)
    max_tool_rounds: int = Field(default=4, ge=0, le=20, description="model → tools → model rounds per turn")
    progress_after: float = Field(default=1.5, ge=0, description="say the progress sentence when tools take longer")
    progress_message: str = Field(default="", description="default progress sentence for tools without their own")
    guardrails: list[GuardrailConfig] = Field(default_factory=list)
    merge_window: float = Field(
        default=0.0,
        ge=0,
        description="join a request to the previous one when it interrupts it unanswered "
        "within this many seconds (0: off)",
    )
    on_finish: str | None = Field(default=None, description="'module:function' (FinishedTurn) called after each reply")
    camera: Literal["off", "auto", "picamera2", "opencv", "file"] = Field(
        default="off", description="lets the model look with [vision:camera]"
    )
    camera_image: Path | None = Field(default=None, description="camera = 'file': the picture it always sees")
    camera_device: int | str = Field(default=0, description="opencv: V4L2 device index or path")
    camera_tool: bool = Field(default=False, description="also offer the model a 'look' tool for the camera")

    @property
    def model_name(self) -> str:
        if self.model:
            return self.model
        return {"anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash", "dify": "dify"}.get(
            self.provider, "gpt-4.1-mini"
        )

    @model_validator(mode="after")
    def _checks(self) -> LLMConfig:
        if self.provider == "dify" and not self.base_url:
            raise ValueError("llm.base_url is required for dify (e.g. https://api.dify.ai/v1)")
        if self.provider == "dify" and self.web_search:
            raise ValueError("llm.web_search: a Dify app searches with the tools set up in Dify itself")
        if self.camera == "file" and self.camera_image is None:
            raise ValueError("llm.camera_image is required when llm.camera = 'file'")
        if self.camera_tool and self.camera == "off":
            raise ValueError("llm.camera_tool needs a camera (llm.camera)")
        return self


TTSProvider = Literal["openai", "espeak", "voicevox", "aivisspeech", "azure", "google", "http"]


class TTSVoiceConfig(Section):
    """One voice: which engine and how it speaks. ``[tts]`` is the default voice; ``[tts.voices.<lang>]``
    adds one per language, chosen when the reply carries ``[lang:<lang>]``."""

    provider: TTSProvider = "openai"
    model: str = "gpt-4o-mini-tts"
    voice: str = Field(default="alloy", description="openai voice; azure/google voice name")
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(default=None, description="speaking style, for models that take it")
    base_url: str | None = None
    api_key: SecretStr | None = Field(default=None, description="default: the provider's usual variable")
    timeout: float = Field(default=15.0, gt=0)
    language: str | None = Field(default=None, description="azure/google: voice language, e.g. 'ja-JP'")
    region: str | None = Field(default=None, description="azure: the Speech resource's region")
    speaker: int = Field(default=1, ge=0, description="voicevox/aivisspeech: style id")
    pitch: float = Field(default=0.0, ge=-0.15, le=0.15, description="voicevox/aivisspeech pitchScale")
    intonation: float = Field(default=1.0, ge=0, le=2, description="voicevox/aivisspeech intonationScale")
    url: str | None = Field(default=None, description="http: URL template ({text} {voice} {language} {speaker})")
    method: Literal["GET", "POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict, description="http: request headers")
    body: str | None = Field(default=None, description='http: body template, e.g. \'{"text": "{text}"}\'')
    audio_format: Literal["wav", "pcm"] = Field(default="wav", description="http: what the engine answers")
    sample_rate: int = Field(default=24_000, ge=8000, le=96_000, description="http: rate of raw pcm")
    audio_field: str | None = Field(default=None, description="http: dotted JSON field holding base64 audio")
    katakana: bool | None = Field(
        default=None, description="English words → katakana before speaking (default: on for Japanese voices)"
    )

    @model_validator(mode="after")
    def _provider_fields(self) -> TTSVoiceConfig:
        if self.provider == "http" and not self.url:
            raise ValueError("url is required for the http synthesizer")
        if self.provider == "azure" and not (self.region or self.base_url):
            raise ValueError("region is required for azure (or give base_url)")
        return self

    @property
    def japanese(self) -> bool:
        return self.provider in ("voicevox", "aivisspeech") or (self.language or "").lower().startswith("ja")


class ReplacementConfig(Section):
    pattern: str
    replacement: str = ""
    regex: bool = Field(default=False, description="pattern is a regular expression (else literal text)")
    ignore_case: bool = False


class TTSConfig(TTSVoiceConfig):
    prefetch: int = Field(default=2, ge=1, le=8, description="sentences synthesized ahead of playback")
    voices: dict[str, TTSVoiceConfig] = Field(default_factory=dict, description="a voice per [lang:xx] tag")
    replacements: list[ReplacementConfig] = Field(default_factory=list, description="applied before every voice")
    katakana_dictionary: Path | None = Field(default=None, description="JSON or TSV word → katakana")
    katakana_llm: bool = Field(default=False, description="ask the LLM for words the dictionary lacks")


class ConversationConfig(Section):
    brain: Literal["auto", "cloud", "remote", "offline", "home_assistant"] = Field(
        default="auto", description="auto = cloud when an API key is configured, offline otherwise"
    )
    brains: tuple[Literal["cloud", "remote", "offline", "home_assistant"], ...] = Field(
        default=(),
        description='ordered fallback list, e.g. ["cloud", "remote", "offline"]; when set it replaces brain',
    )
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    system_prompt_params: dict[str, str] = Field(default_factory=lambda: {"name": "Robo"})
    idle_timeout: float = Field(default=60.0, gt=0, description="forget the conversation after this much silence (s)")
    history_limit: int = Field(default=20, ge=0, le=1000, description="messages kept for context")
    offline_message: str = "I'm not connected to the internet right now, so I can't answer."
    error_message: str = "Sorry, I couldn't answer that. Please try again."
    error_display: float = Field(default=2.0, ge=0, description="seconds the error state stays on")

    @field_validator("brains")
    @classmethod
    def _distinct_brains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once")
        return value
