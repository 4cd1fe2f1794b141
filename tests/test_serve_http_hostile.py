"""Hostile clients of ``appliance serve``'s HTTP API: no key, wrong types, huge or slow bodies, bad audio,
two requests on one session, a client that leaves mid-stream."""

from __future__ import annotations

import base64

import httpx
import pytest
import trio

from tests.http_serve_helpers import AUTH, KEY, EchoBrain, base, serve_http, sse

CHAT = {"type": "start", "session_id": "s", "text": "hello"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}])
@pytest.mark.parametrize("path", ["/chat", "/start", "/chat-messages", "/stt", "/tts", "/transcribe"])
async def test_a_wrong_or_missing_key_gets_401(nursery: trio.Nursery, headers: dict[str, str], path: str) -> None:
    brain = EchoBrain()
    server = await serve_http(nursery, brain)
    async with httpx.AsyncClient(base_url=base(server)) as client:
        response = await client.post(path, json=CHAT, headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert KEY not in response.text and brain.histories == []


async def test_the_key_is_checked_before_the_body_is_read(nursery: trio.Nursery) -> None:
    server = await serve_http(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    # Announces a body it never sends: the answer must not wait for it.
    await stream.send_all(
        b"POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    )
    with trio.fail_after(5):
        head = await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 401")
    await stream.aclose()


async def test_unknown_paths_and_methods(nursery: trio.Nursery) -> None:
    server = await serve_http(nursery)
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH) as client:
        assert (await client.post("/ws", json=CHAT)).status_code == 404
        assert (await client.post("/docs", json=CHAT)).status_code == 404
        wrong = await client.get("/chat")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/chat", "text/plain"), ("/chat", "application/x-www-form-urlencoded"), ("/tts", ""), ("/stt", "text/plain")],
)
async def test_a_wrong_content_type_gets_415(nursery: trio.Nursery, path: str, content_type: str) -> None:
    server = await serve_http(nursery)
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH) as client:
        response = await client.post(path, content=b'{"text": "hi"}', headers={"Content-Type": content_type})
    assert response.status_code == 415


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
        (b'{"type": "start", "text": "hi"}', "session_id is required"),
        (b'{"type": "start", "session_id": 5, "text": "hi"}', "session_id must be"),
        (b'{"type": "start", "session_id": "s"}', "text or audio_data"),
        (b'{"type": "start", "session_id": "s", "audio_data": "%%%not base64"}', "audio_data"),
        (b'{"type": "start", "session_id": "s", "audio_data": 12}', "audio_data"),
        (b'{"type": "start", "session_id": "s", "audio_data": "UklGRgAAAABXQVZF"}', "not a PCM WAV"),
        (b'{"type": "start", "session_id": "s", "audio_data": ""}', "holds no audio"),
        (b'{"type": "start", "session_id": "s", "text": "x", "system_prompt_params": [1]}', "must be an object"),
    ],
)
async def test_bad_chat_bodies_get_400(nursery: trio.Nursery, body: bytes, says: str) -> None:
    brain = EchoBrain()
    server = await serve_http(nursery, brain)
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH) as client:
        response = await client.post("/chat", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert says in response.json()["error"] and brain.histories == []


async def test_bad_audio_for_stt_and_bad_text_for_tts(nursery: trio.Nursery) -> None:
    server = await serve_http(nursery)
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH) as client:
        junk = await client.post("/stt", content=b"RIFF\x00\x00\x00\x00WAVEjunk", headers={"Content-Type": "audio/wav"})
        assert junk.status_code == 400 and "not a PCM WAV" in junk.json()["error"]
        empty = await client.post("/stt", content=b"", headers={"Content-Type": "audio/wav"})
        assert empty.status_code == 400
        no_file = await client.post("/transcribe", files={"other": ("a.wav", b"x", "audio/wav")})
        assert no_file.status_code == 400 and "'audio'" in no_file.json()["error"]
        for body in ({}, {"text": ""}, {"text": 5}):
            assert (await client.post("/tts", json=body)).status_code == 400


async def test_huge_bodies_get_413_announced_or_not(nursery: trio.Nursery) -> None:
    brain = EchoBrain()
    server = await serve_http(nursery, brain, max_audio_seconds=1)
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH) as client:
        huge = await client.post("/tts", content=b"x" * 100_000, headers={"Content-Type": "application/json"})
        assert huge.status_code == 413

        async def chunks():  # no Content-Length: counted as it arrives
            for _ in range(200):
                yield b" " * 10_000

        streamed = await client.post("/tts", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        long_pcm = base64.b64encode(b"\x10\x00" * 40_000).decode()  # 2.5 s at 16 kHz, limit 1 s
        body = {"type": "start", "session_id": "s", "audio_data": long_pcm}
        assert (await client.post("/chat", json=body)).status_code == 413
    assert brain.histories == []


async def test_a_body_that_trickles_in_is_cut_off(nursery: trio.Nursery) -> None:
    brain = EchoBrain()
    server = await serve_http(nursery, brain, start_timeout=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    head = f"POST /chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
    await stream.send_all((head + "Content-Length: 100\r\n\r\n{").encode())
    with trio.fail_after(10):
        answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 408") and brain.histories == []
    await stream.aclose()


async def test_a_new_request_on_a_session_interrupts_the_running_one(nursery: trio.Nursery) -> None:
    brain = EchoBrain(delay=0.2)
    server = await serve_http(nursery, brain)
    first: list[dict] = []
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH, timeout=10) as client:

        async def older() -> None:
            async with client.stream("POST", "/chat", json={**CHAT, "text": "first"}) as response:
                first.extend([frame async for frame in sse(response)])

        async with trio.open_nursery() as inner:
            inner.start_soon(older)
            with trio.fail_after(10):
                while server.turns.busy() == 0:
                    await trio.sleep(0.01)
            async with client.stream("POST", "/chat", json={**CHAT, "text": "second"}) as response:
                second = [frame async for frame in sse(response)]
    assert first[-1]["type"] == "final" and first[-1]["metadata"] == {"interrupted": True}
    assert [f["type"] for f in second] == ["start", "chunk", "chunk", "final"]
    assert second[1]["voice_text"] == "Echo: second."
    assert brain.cancelled == 1 and brain.finished == 1 and server.turns.busy() == 0


async def test_other_sessions_run_side_by_side(nursery: trio.Nursery) -> None:
    brain = EchoBrain(delay=0.05)
    server = await serve_http(nursery, brain)
    results: dict[str, list[dict]] = {}
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH, timeout=10) as client:

        async def one(session: str) -> None:
            async with client.stream("POST", "/chat", json={**CHAT, "session_id": session}) as response:
                results[session] = [frame async for frame in sse(response)]

        async with trio.open_nursery() as inner:
            for session in ("a", "b", "c"):
                inner.start_soon(one, session)
    assert all(
        frames[-1]["type"] == "final" and "interrupted" not in frames[-1]["metadata"] for frames in results.values()
    )
    assert brain.finished == 3


async def test_a_client_leaving_mid_stream_frees_its_turn(nursery: trio.Nursery) -> None:
    brain = EchoBrain(delay=0.5)
    server = await serve_http(nursery, brain)
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH, timeout=10) as client:
        async with client.stream("POST", "/chat", json=CHAT) as response:
            async for frame in sse(response):
                assert frame["type"] == "start"
                break  # leaves after the first frame: the connection closes
    with trio.fail_after(10):
        while server.turns.busy():
            await trio.sleep(0.01)
    assert brain.cancelled == 1 and brain.finished == 0
    # The session is usable at once afterwards.
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH, timeout=10) as client:
        async with client.stream("POST", "/chat", json={**CHAT, "text": "back"}) as response:
            assert [f["type"] async for f in sse(response)][-1] == "final"


async def test_too_many_replies_at_once_get_503(nursery: trio.Nursery) -> None:
    brain = EchoBrain(delay=1.0)
    server = await serve_http(nursery, brain, max_connections=1, max_sessions=1)
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH, timeout=10) as client:
        async with trio.open_nursery() as inner:

            async def hold() -> None:
                async with client.stream("POST", "/chat", json=CHAT) as response:
                    async for _ in sse(response):
                        pass

            inner.start_soon(hold)
            with trio.fail_after(10):
                while server.turns.busy() == 0:
                    await trio.sleep(0.01)
            refused = await client.post("/chat", json={**CHAT, "session_id": "other"})
            inner.cancel_scope.cancel()
    assert refused.status_code == 503


async def test_three_requests_at_once_on_one_session_leave_only_the_last_running(nursery: trio.Nursery) -> None:
    brain = EchoBrain(delay=0.2)
    server = await serve_http(nursery, brain)
    ends: dict[str, dict] = {}
    async with httpx.AsyncClient(base_url=base(server), headers=AUTH, timeout=10) as client:

        async def one(text: str) -> None:
            async with client.stream("POST", "/chat", json={**CHAT, "text": text}) as response:
                ends[text] = [frame async for frame in sse(response)][-1]

        async with trio.open_nursery() as inner:
            inner.start_soon(one, "first")
            with trio.fail_after(10):
                while server.turns.busy() == 0:
                    await trio.sleep(0.01)
            inner.start_soon(one, "second")
            inner.start_soon(one, "third")
    finished = [text for text, end in ends.items() if "interrupted" not in end["metadata"]]
    assert len(finished) == 1 and brain.finished == 1, ends
    assert all(end["type"] == "final" for end in ends.values())
