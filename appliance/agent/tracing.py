"""LLM tracing over OpenTelemetry (OTLP/HTTP): a turn as a trace, for Langfuse, Jaeger or Grafana Tempo.

Off by default and then free: nothing here is imported and no provider is wrapped. On, a turn is one trace
(the ``turn`` span, opened around the brain's reply) with a child span for every STT request, every LLM
round (its messages, tool calls and the tool results it was sent, the text it wrote, time to first token)
and every sentence's speech. Spans are batched and sent by the OpenTelemetry SDK's exporter thread, so a
slow collector costs a turn nothing; a dead one costs dropped spans, never a turn.

The user's words can be left out (``user_text = "redact"``: transcripts and user messages become their length),
and every configured secret is scrubbed from every attribute before it leaves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing, contextmanager
from typing import Any

from appliance.settings.agent import TracingConfig

log = logging.getLogger(__name__)

MAX_ATTRIBUTE = 16_000  # characters of one attribute: a long history is cut, not dropped


class Tracing:
    """The tracer and the wrappers that put each provider call in a span."""

    def __init__(self, cfg: TracingConfig, secrets: Sequence[str] = (), exporter: Any = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            headers = {name: value.get_secret_value() for name, value in cfg.headers.items()}
            exporter = OTLPSpanExporter(endpoint=cfg.endpoint, headers=headers, timeout=cfg.timeout)
        self.provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
        self.tracer = self.provider.get_tracer("appliance")
        self.redact_user = cfg.user_text == "redact"
        # Longest first: a short key inside a long one must not leave the rest of the long one readable.
        self.secrets = tuple(sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True))

    # --- attributes ---------------------------------------------------------------------------------------

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text if len(text) <= MAX_ATTRIBUTE else text[:MAX_ATTRIBUTE] + "…"

    def user(self, text: str) -> str:
        return f"[{len(text)} characters]" if self.redact_user else self.clean(text)

    def messages(self, system: str, messages: Sequence[Any], rounds: Sequence[Any]) -> str:
        shown: list[dict[str, Any]] = [{"role": "system", "content": self.clean(system)}]
        for message in messages:
            content = self.user(message.content) if message.role == "user" else self.clean(message.content)
            shown.append({"role": message.role, "content": content})
        for number, tool_round in enumerate(rounds):
            for result in tool_round.results:
                shown.append(
                    {
                        "role": "tool",
                        "round": number,
                        "name": result.call.name,
                        "arguments": result.call.arguments,
                        "result": self.clean(result.content),
                        "is_error": result.is_error,
                    }
                )
        return self.clean(json.dumps(shown, ensure_ascii=False, default=str))

    # --- spans ------------------------------------------------------------------------------------------

    @contextmanager
    def turn(self, turn_id: str, brain: str, source: str) -> Iterator[Any]:
        """The trace of one turn; spans of provider calls made inside (child tasks included) join it."""
        with self.tracer.start_as_current_span(
            "turn",
            attributes={"appliance.turn_id": turn_id, "appliance.brain": brain, "appliance.source": source},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    def wrap_stt(self, stt: Any) -> Any:
        return TracedRecognizer(stt, self)

    def wrap_llm(self, llm: Any) -> Any:
        return TracedLLM(llm, self)

    def wrap_tts(self, tts: Any) -> Any:
        return TracedSynthesizer(tts, self)

    def flush(self, timeout_millis: int = 10_000) -> bool:
        return bool(self.provider.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self.provider.shutdown()


def _ended(span: Any, error: BaseException | None) -> None:
    mark_status(span, error)
    span.end()


def mark_status(span: Any, error: BaseException | None) -> None:
    from opentelemetry.trace import Status, StatusCode

    if error is None:
        span.set_status(Status(StatusCode.OK))
    elif isinstance(error, Exception):
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:300]))
    else:  # cancelled: the user barged in, or the turn was stopped
        span.set_attribute("appliance.cancelled", True)


class _Forwarding:
    """Keeps the wrapped provider's optional parts (``warm``) visible to whoever looks for them."""

    def __init__(self, inner: Any, tracing: Tracing) -> None:
        self.inner = inner
        self.tracing = tracing
        self.name = inner.name
        if hasattr(inner, "warm"):
            self.warm = inner.warm

    async def aclose(self) -> None:
        await self.inner.aclose()


class TracedRecognizer(_Forwarding):
    async def transcribe(self, audio: Any, language: str | None = None) -> str:
        span = self.tracing.tracer.start_span(
            "stt", attributes={"gen_ai.system": self.name, "appliance.audio_seconds": round(audio.duration, 3)}
        )
        error: BaseException | None = None
        try:
            text = await self.inner.transcribe(audio, language)
            span.set_attribute("appliance.transcript", self.tracing.user(text))
            return text
        except BaseException as exc:
            error = exc
            raise
        finally:
            _ended(span, error)


class TracedSynthesizer(_Forwarding):
    def __init__(self, inner: Any, tracing: Tracing) -> None:
        super().__init__(inner, tracing)
        if hasattr(inner, "synthesize_stream"):
            self.synthesize_stream = self._synthesize_stream

    def _span(self, text: str) -> Any:
        return self.tracing.tracer.start_span(
            "tts", attributes={"gen_ai.system": self.name, "appliance.text": self.tracing.clean(text)}
        )

    async def synthesize(self, text: str) -> Any:
        span = self._span(text)
        error: BaseException | None = None
        try:
            clip = await self.inner.synthesize(text)
            span.set_attribute("appliance.audio_seconds", round(clip.duration, 3))
            return clip
        except BaseException as exc:
            error = exc
            raise
        finally:
            _ended(span, error)

    async def _synthesize_stream(self, text: str) -> AsyncIterator[Any]:
        span = self._span(text)
        error: BaseException | None = None
        seconds = 0.0
        try:
            async with aclosing(self.inner.synthesize_stream(text)) as pieces:
                async for piece in pieces:
                    if seconds == 0.0:
                        span.add_event("first audio")
                    seconds += piece.duration
                    yield piece
        except BaseException as exc:
            error = exc
            raise
        finally:
            span.set_attribute("appliance.audio_seconds", round(seconds, 3))
            _ended(span, error)


class TracedLLM(_Forwarding):
    async def stream(self, system: str, messages: Sequence[Any], **options: Any) -> AsyncIterator[Any]:
        from appliance.providers.llm.base import ToolCall

        tracing = self.tracing
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": self.name,
            "gen_ai.request.model": str(getattr(self.inner, "model", "")),
            "gen_ai.input.messages": tracing.messages(system, messages, options.get("rounds", ())),
            "appliance.tools_offered": [spec.name for spec in options.get("tools", ())],
            "appliance.images": len(options.get("images", ())),
        }
        span = tracing.tracer.start_span("llm", attributes=attributes)
        written: list[str] = []
        calls: list[dict[str, Any]] = []
        error: BaseException | None = None
        try:
            async with aclosing(self.inner.stream(system, messages, **options)) as events:
                async for event in events:
                    if isinstance(event, ToolCall):
                        calls.append({"id": event.id, "name": event.name, "arguments": event.arguments})
                        span.add_event(
                            "tool call",
                            {
                                "name": event.name,
                                "arguments": tracing.clean(
                                    json.dumps(event.arguments, ensure_ascii=False, default=str)
                                ),
                            },
                        )
                    else:
                        if not written:
                            span.add_event("first token")
                        written.append(event)
                    yield event
        except BaseException as exc:
            error = exc
            raise
        finally:
            span.set_attribute(
                "gen_ai.output.messages",
                tracing.clean(
                    json.dumps(
                        [{"role": "assistant", "content": "".join(written), "tool_calls": calls}],
                        ensure_ascii=False,
                        default=str,
                    )
                ),
            )
            _ended(span, error)
