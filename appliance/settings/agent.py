"""``[response_hooks]`` and ``[tracing]``: what runs around each turn."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from appliance.settings_base import Section


class ResponseHooksConfig(Section):
    on_start: list[str] = Field(default_factory=list, description="'module:function's called when a reply starts")
    on_chunk: list[str] = Field(default_factory=list, description="… with each sentence as it starts playing")
    on_final: list[str] = Field(default_factory=list, description="… when the reply is over (done, interrupted)")
    on_error: list[str] = Field(default_factory=list, description="… when the turn failed")
    timeout: float = Field(default=5.0, gt=0, le=300, description="seconds a hook call may take")
    max_pending: int = Field(default=32, ge=1, le=10_000, description="stages queued for a hook that falls behind")


class TracingConfig(Section):
    enabled: bool = False
    endpoint: str = Field(
        default="http://127.0.0.1:4318/v1/traces",
        description="OTLP/HTTP traces URL (Langfuse: https://cloud.langfuse.com/api/public/otel/v1/traces)",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="sent with every export, e.g. Authorization (a secret: never shown)"
    )
    service_name: str = Field(default="appliance", description="service.name of the traces")
    user_text: Literal["keep", "redact"] = Field(
        default="keep", description="redact: the user's words become their length"
    )
    timeout: float = Field(default=10.0, gt=0, le=120, description="seconds an export may take")
