"""``appliance serve`` over HTTP with the real cloud brain (on the fake cloud): AIAvatarKit's vision round trip
(a reply with ``[vision:camera]`` ends in a ``vision`` frame; the client's picture comes back in ``files`` and
reaches the model) and its ``tool_call`` frames, plus hostile ``files``."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from PIL import Image

from appliance.assembly.brains import serving_brain
from appliance.events import SentenceStarted, TurnFinished
from appliance.server.http_api import HttpAvatarServer
from appliance.settings.brains import ServerConfig
from appliance.turns import Utterance
from tests.fakes.cloud import FakeCloud, fake_cloud
from tests.harness import cloud_config, running_appliance
from tests.http_serve_helpers import AUTH, KEY, base, events
from tests.test_image_tool import huge_png_header


def png(colour: str = "#ff0000") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), colour).save(out, "PNG")
    return out.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


@asynccontextmanager
async def served_cloud(**fake: Any) -> AsyncIterator[tuple[str, FakeCloud]]:
    tools = fake.pop("tools", [])
    async with fake_cloud(**fake) as cloud, trio.open_nursery() as nursery:
        brain, _tracing = serving_brain(cloud_config(cloud.url, llm__tools=tools))  # as `appliance serve` builds it
        config = ServerConfig(host="127.0.0.1", port=0, http_port=0, api_key=KEY)  # type: ignore[arg-type]
        server = HttpAvatarServer(brain, config)
        await nursery.start(server.run)
        yield base(server), cloud
        nursery.cancel_scope.cancel()


async def test_a_reply_that_asks_to_look_ends_in_a_vision_frame_and_the_picture_reaches_the_model() -> None:
    picture = png()
    async with served_cloud(reply="Let me see. [vision:camera]", image_reply="[face:joy] A red square!") as (
        url,
        cloud,
    ):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            first = await events(client, "/chat", {"type": "start", "session_id": "s", "text": "What is this?"})
            context = first[0]["context_id"]
            # what AIAvatarHttpClient sends on a `vision` frame: the same session and context, the picture only
            files = [{"type": "image", "url": data_url(picture)}]
            second = await events(client, "/chat", {"session_id": "s", "context_id": context, "files": files})
    assert [f["type"] for f in first] == ["start", "chunk", "chunk", "vision"]
    assert first[-1]["metadata"] == {"source": "camera"} and first[-1]["text"] == "Let me see. [vision:camera]"
    assert first[2]["text"] == "[vision:camera]" and first[2]["voice_text"] == "" and first[2]["audio_data"] is None
    assert [f["type"] for f in second] == ["start", "chunk", "final"]
    assert second[1]["voice_text"] == "A red square!" and second[1]["avatar_control_request"]["face_name"] == "joy"
    sent = cloud.bodies("/v1/chat/completions")[1]["messages"]
    parts = sent[-1]["content"]
    assert {"type": "image_url", "image_url": {"url": data_url(picture)}} in [
        {"type": p["type"], "image_url": {"url": p["image_url"]["url"]}} for p in parts if p["type"] == "image_url"
    ]
    assert [m["role"] for m in sent[1:-1]] == ["user", "assistant"]  # the look was asked in this conversation
    assert "[vision:camera]" in sent[-2]["content"]


async def test_tool_calls_appear_in_the_stream_as_aiavatarkit_sends_them() -> None:
    tools = [{"function": "tests.test_providers_agent:get_weather"}]
    async with served_cloud(tool_call=("get_weather", {"city": "Tokyo"}), tools=tools) as (url, _cloud):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            frames = await events(client, "/chat", {"type": "start", "session_id": "s", "text": "Weather?"})
    kinds = [f["type"] for f in frames]
    assert kinds[:3] == ["start", "tool_call", "tool_call"] and kinds[-1] == "final"
    called, answered = frames[1]["metadata"]["tool_call"], frames[2]["metadata"]["tool_call"]
    assert called["name"] == "get_weather" and json.loads(called["arguments"]) == {"city": "Tokyo"}
    assert "result" not in called and called["id"] == answered["id"]
    assert answered["result"] == {"data": {"city": "Tokyo", "days": 1, "sky": "sunny"}, "is_final": True}
    assert all(f["transaction_id"] == frames[0]["transaction_id"] for f in frames)
    assert any("sunny" in (f["voice_text"] or "") for f in frames if f["type"] == "chunk")


async def test_tool_calls_of_one_session_never_show_in_another() -> None:
    tools = [{"function": "tests.test_providers_agent:get_weather"}]
    async with served_cloud(tool_call=("get_weather", {"city": "Tokyo"}), tools=tools) as (url, _cloud):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            results: dict[str, list[dict[str, Any]]] = {}

            async def ask(session: str) -> None:
                results[session] = await events(client, "/chat", {"session_id": session, "text": "hi"})

            async with trio.open_nursery() as nursery:  # both at once, both calling the tool
                for session in ("a", "b", "c"):
                    nursery.start_soon(ask, session)
    assert sorted(results) == ["a", "b", "c"]
    for session, frames in results.items():
        assert all(f["session_id"] == session for f in frames)
        assert [f["type"] for f in frames].count("tool_call") == 2  # its own call and result, nobody else's
        assert len({f["transaction_id"] for f in frames}) == 1


@pytest.mark.parametrize(
    ("files", "status", "says"),
    [
        ("data:image/png;base64,AAAA", 400, "files must be a list"),
        ([{"type": "image"}], 400, "files[0] must be an object with a 'url'"),
        ([42], 400, "files[0] must be an object"),
        ([{"type": "audio", "url": "data:image/png;base64,AAAA"}], 400, "only 'image' files"),
        ([{"type": "image", "url": "http://169.254.169.254/latest"}], 400, "nothing is fetched"),
        ([{"type": "image", "url": "data:text/html;base64,PGI+"}], 400, "nothing is fetched"),
        ([{"type": "image", "url": "data:image/png;base64,!!!not base64!!!"}], 400, "not valid base64"),
        ([{"type": "image", "url": data_url(b"just some text")}], 400, "cannot be read"),
        ([{"type": "image", "url": data_url(huge_png_header(100_000, 100_000))}], 400, "too large"),
        ([{"type": "image", "url": data_url(png())}] * 5, 413, "at most 4 pictures"),
        ([{"type": "image", "url": data_url(b"\x00" * (3 * 1024 * 1024))}] * 3, 413, "bytes in all"),
    ],
)
async def test_hostile_files_are_refused_with_the_reason(files: Any, status: int, says: str) -> None:
    async with served_cloud() as (url, cloud):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            response = await client.post("/chat", json={"session_id": "s", "files": files}, headers=AUTH)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]
    assert cloud.bodies("/v1/chat/completions") == []  # refused before the model was asked anything


async def test_a_body_too_big_even_for_pictures_gets_413_before_it_is_read() -> None:
    async with served_cloud() as (url, _cloud):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            huge = "A" * (16 * 1024 * 1024)
            response = await client.post(
                "/chat", json={"session_id": "s", "files": [{"url": f"data:image/png;base64,{huge}"}]}, headers=AUTH
            )
    assert response.status_code == 413


async def test_a_robot_without_a_camera_says_the_words_and_passes_the_tag_on_silently() -> None:
    """Only a serving brain passes the tag on to its client: a robot without a camera drops it as before."""
    async with fake_cloud(reply="Let me look. [vision:camera]") as cloud:
        async with running_appliance(cloud_config(cloud.url)) as (app, log):
            await app.conversation.start_turn(Utterance(text="What do you see?"))
            done = await log.wait_for(TurnFinished)
            spoken = [e.text for e in log.of(SentenceStarted)]
    assert done.outcome == "done" and spoken == ["Let me look."]
    assert len(cloud.bodies("/v1/chat/completions")) == 1  # no camera: nothing to look with, no second request
