"""Built-in ``generate_image``: a Gemini-format image service on 127.0.0.1 draws, the robot's display shows the
picture for its time and then the face again; every bad reply becomes a reason for the model, never a crash."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance.agent.image_tool import image_tool, picture_from_reply
from appliance.agent.tools import ToolError
from appliance.bus import EventBus
from appliance.events import PictureRequested, TurnFinished
from appliance.hardware.display import DisplayService
from appliance.settings.hardware import DisplayConfig
from tests.fakes.providers import fake_providers
from tests.harness import cloud_config, running_appliance, serve_routes
from tests.test_providers_agent import ASK


def png(colour: str = "#ff0000", size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that claims to be huge but holds no pixels: refused before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def inline(data: bytes, mime: str = "image/png") -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {
                    "parts": [
                        {"text": "Here you go."},
                        {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}},
                    ]
                },
                "finishReason": "STOP",
            }
        ]
    }


class ImageService:
    def __init__(self) -> None:
        self.reply: Any = inline(png())
        self.status = 200
        self.requests: list[tuple[str, dict[str, str], Any]] = []


@asynccontextmanager
async def image_service() -> AsyncIterator[tuple[str, ImageService]]:
    service = ImageService()

    async def generate(request: Request) -> Response:
        service.requests.append((request.url.path, dict(request.headers), await request.json()))
        if isinstance(service.reply, bytes):
            return Response(service.reply, status_code=service.status, media_type="application/json")
        return JSONResponse(service.reply, status_code=service.status)

    async with serve_routes([Route("/v1beta/models/{model}:generateContent", generate, methods=["POST"])]) as url:
        yield url, service


async def test_the_model_draws_and_the_display_shows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-test-key")
    async with (
        image_service() as (base, service),
        fake_providers(tool_call=("generate_image", {"prompt": "a red square"}), tool_reply="Look! {result}") as fake,
    ):
        tools = [{"builtin": "generate_image", "base_url": base, "model": "img-model", "show_seconds": 30}]
        config = cloud_config(
            fake.url, llm__tools=tools, hardware__display={"driver": "dummy", "width": 128, "height": 64}
        )
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(ASK)
            done = await log.wait_for(TurnFinished)
            await log.wait_for(PictureRequested)
            with trio.fail_after(10):  # fitted in a worker thread, then drawn by the render loop
                while app.body.display.snapshot().convert("RGB").getpixel((64, 32)) != (255, 0, 0):
                    await trio.sleep(0.01)
            shown = app.body.display.snapshot()
    assert done.outcome == "done"
    path, headers, body = service.requests[0]
    assert path == "/v1beta/models/img-model:generateContent"
    assert headers["x-goog-api-key"] == "gemini-test-key"
    assert body["contents"][0]["parts"][0]["text"] == "a red square"
    assert body["generationConfig"]["responseModalities"] == ["IMAGE"]
    assert shown.size == (128, 64) and shown.convert("RGB").getpixel((64, 32)) == (255, 0, 0)
    tool_message = fake.bodies("/v1/chat/completions")[1]["messages"][-1]
    assert "on the robot's display" in tool_message["content"]


async def test_a_robot_without_a_display_tells_the_model_so() -> None:
    async with (
        image_service() as (base, _service),
        fake_providers(tool_call=("generate_image", {"prompt": "a cat"}), tool_reply="{result}") as fake,
    ):
        config = cloud_config(
            fake.url, llm__tools=[{"builtin": "generate_image", "base_url": base}], hardware__display={"driver": "none"}
        )
        async with running_appliance(config) as (app, log):
            await app.conversation.start_turn(ASK)
            await log.wait_for(TurnFinished)
            assert log.of(PictureRequested) == []
    assert "no display showing pictures" in fake.bodies("/v1/chat/completions")[1]["messages"][-1]["content"]


async def test_a_picture_shows_for_its_time_a_newer_one_replaces_it_then_the_face_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = EventBus()
    display = DisplayService(bus, DisplayConfig(driver="dummy", width=64, height=64), None, driver="dummy")

    def centre() -> Any:
        return display.snapshot().convert("RGB").getpixel((32, 32))

    async def until(condition: Any) -> float:
        while not condition():  # the picture is fitted in a worker thread: wait for it, not for a set time
            await trio.sleep(0.01)
        return trio.current_time()

    async with trio.open_nursery() as nursery:
        await nursery.start(display.run)
        face = display.snapshot().copy()
        bus.publish(PictureRequested(png("#ff0000"), 10, "red"))
        await until(lambda: centre() == (255, 0, 0))
        bus.publish(PictureRequested(png("#0000ff"), 20, "blue"))
        blue_at = await until(lambda: centre() == (0, 0, 255))
        await trio.sleep_until(blue_at + 15)  # red's 10 s are over; blue's are not
        assert centre() == (0, 0, 255) and display.picture is not None
        await trio.sleep_until(blue_at + 21)
        assert display.picture is None
        assert display.snapshot().tobytes() == face.tobytes()
        bus.publish(PictureRequested(b"not a picture", 10, "broken"))  # logged, the face stays
        await trio.sleep(1)
        assert display.picture is None
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            {"candidates": [{"content": {"parts": [{"text": "I cannot draw that."}]}, "finishReason": "STOP"}]},
            "sent no picture: I cannot draw that.",
        ),
        ({"promptFeedback": {"blockReason": "SAFETY"}}, "refused the request (SAFETY)"),
        (
            {"candidates": [{"content": {"parts": []}, "finishReason": "IMAGE_SAFETY"}]},
            "without a picture (IMAGE_SAFETY)",
        ),
        (inline(b"hello, not an image"), "cannot be read"),
        (
            {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "%%%%"}}]}}]},
            "cannot be read",
        ),
        (
            {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": ""}}]}}]},
            "empty picture",
        ),
        (inline(huge_png_header(8000, 8000)), "8000x8000, too large"),
        (inline(huge_png_header(30_000, 30_000)), "too large to show"),
        ([1, 2, 3], "not JSON"),
        ({"candidates": "nonsense"}, "sent no picture"),
    ],
)
def test_bad_replies_become_reasons(reply: Any, message: str) -> None:
    with pytest.raises(ToolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        picture_from_reply(reply)


def test_a_data_url_in_text_is_a_picture_too() -> None:
    data = png("#00ff00")
    reply = {
        "candidates": [
            {"content": {"parts": [{"text": f"![img](data:image/png;base64,{base64.b64encode(data).decode()})"}]}}
        ]
    }
    assert picture_from_reply(reply) == (data, "image/png")


@pytest.mark.parametrize(("status", "body", "message"), [(500, b"{}", "HTTP 500"), (200, b"<html>", "not JSON")])
async def test_service_failures_are_reasons(status: int, body: bytes, message: str) -> None:
    shown: list[Any] = []
    async with image_service() as (base, service):
        service.status, service.reply = status, body
        tool = image_tool(lambda *a: shown.append(a), "k", base_url=base)
        with pytest.raises(ToolError, match=message):
            await tool.call({"prompt": "a dog"})
        with pytest.raises(ToolError, match="say what to draw"):
            await tool.call({"prompt": "  "})
    assert shown == []


async def test_an_unreachable_service_is_a_reason() -> None:
    tool = image_tool(lambda *a: None, "k", base_url="http://127.0.0.1:9", timeout=2)
    with pytest.raises(ToolError, match="cannot reach the image service"):
        await tool.call({"prompt": "a dog"})
