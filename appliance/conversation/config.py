from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from appliance.settings_base import Section

DEFAULT_SYSTEM_PROMPT = (
    "You are {name}, a small talking robot. Answer in one to three short spoken sentences, "
    "without lists or markdown. You may start a sentence with a face tag such as [face:joy], "
    "[face:angry], [face:sorrow], [face:fun] or [face:surprised] when it fits."
)


class STTConfig(Section):
    provider: Literal["openai"] = "openai"
    model: str = "gpt-4o-mini-transcribe"
    base_url: str | None = Field(default=None, description="an OpenAI-compatible server, e.g. http://pc:8000/v1")
    api_key: SecretStr | None = Field(default=None, description="default: OPENAI_API_KEY")
    language: str | None = Field(default=None, description="ISO-639-1 hint, e.g. 'en' or 'ja'")
    timeout: float = Field(default=15.0, gt=0)


class LLMConfig(Section):
    provider: Literal["openai", "anthropic"] = "openai"
    model: str | None = Field(default=None, description="default: gpt-4.1-mini / claude-haiku-4-5")
    base_url: str | None = None
    api_key: SecretStr | None = Field(default=None, description="default: OPENAI_API_KEY / ANTHROPIC_API_KEY")
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=16, le=32768)
    timeout: float = Field(default=30.0, gt=0, description="seconds to the first token")

    @property
    def model_name(self) -> str:
        if self.model:
            return self.model
        return "claude-haiku-4-5" if self.provider == "anthropic" else "gpt-4.1-mini"


class TTSConfig(Section):
    provider: Literal["openai", "espeak"] = "openai"
    model: str = "gpt-4o-mini-tts"
    voice: str = "alloy"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    instructions: str | None = Field(default=None, description="speaking style, for models that take it")
    base_url: str | None = None
    api_key: SecretStr | None = Field(default=None, description="default: OPENAI_API_KEY")
    timeout: float = Field(default=15.0, gt=0)
    prefetch: int = Field(default=2, ge=1, le=8, description="sentences synthesized ahead of playback")


class ConversationConfig(Section):
    brain: Literal["auto", "cloud", "remote", "offline"] = Field(
        default="auto", description="auto = cloud when an API key is configured, offline otherwise"
    )
    brains: tuple[Literal["cloud", "remote", "offline"], ...] = Field(
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
