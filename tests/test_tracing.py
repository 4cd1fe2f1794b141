"""LLM tracing: a real turn through the cloud brain exported over OTLP/HTTP to a receiver on 127.0.0.1 that
decodes the protobuf the way a collector does; spans nest under the turn, secrets and (when asked) the
user's words never leave, a dead collector costs the turn nothing, and tracing off imports nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from appliance.events import TurnFinished
from appliance.turns import Utterance
from tests.fakes.cloud import fake_cloud
from tests.harness import cloud_config, running_appliance
from tests.test_providers_agent import ASK, SPEECH

KEY = "sk-tracing-test-key-0123456789"


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []

    def spans(self) -> list[Any]:
        found = []
        for body in self.bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    found.extend(scope.spans)
        return found


def attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = (
            [v.string_value for v in value.array_value.values] if kind == "array_value" else getattr(value, kind)
        )
    return out


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[str, Receiver]]:
    receiver = Receiver()

    async def traces(request: Request) -> Response:
        receiver.bodies.append(await request.body())
        receiver.headers.append(dict(request.headers))
        return Response(b"", media_type="application/x-protobuf")

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])]), config)  # type: ignore[arg-type]
        yield f"{binds[0]}/v1/traces", receiver
        nursery.cancel_scope.cancel()


async def traced_turn(endpoint: str, utterance: Utterance, **tracing: Any) -> TurnFinished:
    async with fake_cloud() as cloud:
        config = cloud_config(
            cloud.url,
            llm__api_key=KEY,
            tracing__enabled=True,
            tracing__endpoint=endpoint,
            tracing__headers={"Authorization": "Basic cGs6c2s="},
            **{f"tracing__{k}": v for k, v in tracing.items()},
        )
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(utterance)
            done = await log.wait_for(TurnFinished)
            assert await trio.to_thread.run_sync(app.tracing.flush)
    return done


async def test_a_turn_is_one_trace_with_stt_llm_and_a_span_per_sentence() -> None:
    async with otlp_receiver() as (endpoint, receiver):
        done = await traced_turn(endpoint, SPEECH)
    assert done.outcome == "done"
    spans = receiver.spans()
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert set(by_name) == {"turn", "stt", "llm", "tts"}
    (turn,) = by_name["turn"]
    assert all(s.trace_id == turn.trace_id for s in spans)
    assert all(s.parent_span_id == turn.span_id for s in spans if s.name != "turn")
    assert attrs(turn)["appliance.turn_id"] == done.turn_id and attrs(turn)["appliance.brain"] == "cloud"
    assert attrs(by_name["stt"][0])["appliance.transcript"] == "What time is it?"
    llm = attrs(by_name["llm"][0])
    assert (
        '"content": "What time is it?"' in llm["gen_ai.input.messages"] and llm["gen_ai.request.model"] == "fake-model"
    )
    assert "It is nine o'clock." in llm["gen_ai.output.messages"]
    assert [e.name for e in by_name["llm"][0].events] == ["first token"]
    assert sorted(attrs(s)["appliance.text"] for s in by_name["tts"]) == sorted(
        ["It is nine o'clock.", "Time for breakfast!", "Have a nice day."]
    )
    assert receiver.headers[0]["authorization"] == "Basic cGs6c2s="
    assert b"x-protobuf" in receiver.headers[0]["content-type"].encode()
    assert all(KEY.encode() not in body for body in receiver.bodies)


async def test_the_users_words_can_be_left_out() -> None:
    async with otlp_receiver() as (endpoint, receiver):
        await traced_turn(endpoint, ASK, user_text="redact")
    payload = b"".join(receiver.bodies)
    assert b"weather in Tokyo" not in payload
    turn = next(s for s in receiver.spans() if s.name == "turn")
    assert attrs(turn)["appliance.user_text"] == f"[{len(ASK.text or '')} characters]"


async def test_a_dead_collector_costs_the_turn_nothing() -> None:
    async with fake_cloud() as cloud:
        config = cloud_config(
            cloud.url, tracing__enabled=True, tracing__endpoint="http://127.0.0.1:9/v1/traces", tracing__timeout=1
        )
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(ASK)
            done = await log.wait_for(TurnFinished)
    assert done.outcome == "done" and len(done.spoken) > 10


def test_tracing_off_imports_no_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from appliance.app import build_appliance\n"
        "from appliance.config import AppConfig\n"
        "app = build_appliance(AppConfig.model_validate({'gpio': {'pin_factory': 'mock'}}), handle_signals=False)\n"
        "assert app.tracing is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_secret_said_or_returned_is_scrubbed_from_every_span() -> None:
    async with otlp_receiver() as (endpoint, receiver):
        await traced_turn(endpoint, Utterance(text=f"my key is {KEY}, keep it"))
    payload = b"".join(receiver.bodies)
    assert KEY.encode() not in payload and b"my key is [redacted], keep it" in payload


async def test_tool_rounds_show_the_call_and_the_result_sent_back() -> None:
    async with (
        otlp_receiver() as (endpoint, receiver),
        fake_cloud(tool_call=("get_weather", {"city": "Tokyo"})) as cloud,
    ):
        config = cloud_config(
            cloud.url,
            tracing__enabled=True,
            tracing__endpoint=endpoint,
            llm__tools=[{"function": "tests.test_providers_agent:get_weather"}],
        )
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(ASK)
            await log.wait_for(TurnFinished)
            assert await trio.to_thread.run_sync(app.tracing.flush)
    rounds = sorted((s for s in receiver.spans() if s.name == "llm"), key=lambda s: s.start_time_unix_nano)
    assert len(rounds) == 2
    call = rounds[0].events[-1]
    assert call.name == "tool call" and attrs(call)["name"] == "get_weather" and "Tokyo" in attrs(call)["arguments"]
    sent_back = attrs(rounds[1])["gen_ai.input.messages"]
    assert '"role": "tool"' in sent_back and '"name": "get_weather"' in sent_back and "sunny" in sent_back
    assert attrs(rounds[0])["appliance.tools_offered"] == ["get_weather"]
