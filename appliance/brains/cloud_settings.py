"""What a ``CloudBrain`` is built from besides its three providers: how it talks, and the agent around it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.providers.llm.base import ToolResult
from appliance.providers.tts.base import SpeechSynthesizer


@dataclass(frozen=True)
class FinishedTurn:
    """What an on-finish hook gets: enough to store a long-term memory of the exchange."""

    turn_id: str
    conversation_id: str
    user_text: str
    reply_text: str
    tool_results: tuple[ToolResult, ...] = ()


@dataclass(frozen=True)
class CloudSettings:
    """How the cloud brain talks: the prompt, the language and the timing knobs."""

    system_prompt: str
    prompt_params: Mapping[str, str] = field(default_factory=dict)
    language: str | None = None
    prefetch: int = 2  # sentences synthesized ahead of the one playing
    first_token_timeout: float = 30.0
    max_tool_rounds: int = 4
    progress_after: float = 1.5  # a tool still running after this long gets a progress sentence
    progress_message: str = ""
    merge_window: float = 0.0  # join a request to an unanswered one that started at most this long ago
    on_finish_timeout: float = 10.0


@dataclass(frozen=True)
class CloudAgent:
    """The agent features around the pipe, each optional."""

    tools: Any = None  # a ToolRegistry (or None): read at every turn, so tools can come and go
    voices: Mapping[str, SpeechSynthesizer] = field(default_factory=dict)  # a voice per ``[lang:xx]``
    guardrails: Sequence[Any] = ()
    camera: Any = None
    on_finish: Callable[[FinishedTurn], Any] | None = None
    jobs: Any = None  # a BackgroundJobs service for the on-finish hook
    # ``appliance serve``: a bare [vision:camera] goes on to the client (whose camera answers it) when there is
    # no camera here; on a robot without one it is dropped.
    client_camera: bool = False
