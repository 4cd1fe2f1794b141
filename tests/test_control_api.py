"""The control API over real HTTP: httpx against the server on an ephemeral 127.0.0.1 port."""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from appliance.control.client import parse_sse
from appliance.events import FaceChanged, FaceRequested, MuteRequested, State, StateChanged
from tests.fakes.control_robot import TOKEN, Robot, running_robot

ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/v1/status", None),
    ("GET", "/v1/listener/status", None),
    ("POST", "/v1/listener/start", {}),
    ("POST", "/v1/listener/stop", {}),
    ("POST", "/v1/mute", {}),
    ("POST", "/v1/unmute", {}),
    ("POST", "/v1/volume", {"volume": 0.5}),
    ("POST", "/v1/say", {"text": "hello"}),
    ("POST", "/v1/face", {"name": "joy"}),
    ("POST", "/v1/animation", {"name": "wave"}),
    ("POST", "/v1/perform", {"face": "joy"}),
    ("POST", "/v1/turn/cancel", {}),
    ("GET", "/v1/histories", None),
    ("GET", "/v1/histories/abc", None),
    ("DELETE", "/v1/histories/abc", None),
    ("GET", "/v1/config", None),
    ("PATCH", "/v1/config", {"log": {"level": "INFO"}}),
    ("GET", "/v1/devices", None),
    ("GET", "/v1/face.png", None),
    ("GET", "/v1/metrics", None),
    ("GET", "/v1/events", None),
    ("POST", "/v1/conversation", {"text": "hi"}),
    ("GET", "/openapi.json", None),
]


@pytest.fixture
async def robot(tmp_path):
    async with running_robot(tmp_path) as robot:
        yield robot


@pytest.fixture
async def api(robot: Robot):
    async with robot.client() as client:
        yield client


async def collect_sse(response: httpx.Response, until: str, limit: int = 200) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    buffer: list[str] = []
    async for line in response.aiter_lines():
        buffer.append(line)
        if line == "":
            events.extend(parse_sse(iter(buffer)))
            buffer = []
            if (events and events[-1][0] == until) or len(events) >= limit:
                return events
    return events


# --- auth --------------------------------------------------------------------------------------------------


async def test_health_needs_no_token(robot: Robot):
    async with robot.client(token=None) as anonymous:
        response = await anonymous.get("/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["ready"] is True


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_every_other_route_wants_the_token(robot: Robot, method: str, path: str, body: Any):
    async with robot.client(token=None) as anonymous, robot.client(token="wrong-token-but-long-enough") as wrong:
        missing = await anonymous.request(method, path, json=body)
        bad = await wrong.request(method, path, json=body)
    assert missing.status_code == 401, missing.text
    assert missing.headers["www-authenticate"] == "Bearer"
    assert bad.status_code == 403, bad.text


async def test_malformed_authorization_header_is_401(robot: Robot, api: httpx.AsyncClient):
    response = await api.get("/v1/status", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401


async def test_without_a_token_only_loopback_hosts_are_served(tmp_path):
    async with running_robot(tmp_path, token=None) as robot, robot.client(token=None) as client:
        ok = await client.get("/v1/status")
        rebound = await client.get("/v1/status", headers={"Host": "evil.example:8080"})
    assert ok.status_code == 200
    assert rebound.status_code == 403
    assert "loopback" in rebound.json()["detail"]


# --- status, listener, mute, volume ------------------------------------------------------------------------


async def test_status_reports_subsystems_brain_audio_and_version(robot: Robot, api: httpx.AsyncClient):
    body = (await api.get("/v1/status")).json()
    names = {s["name"]: s for s in body["subsystems"]}
    assert {"state", "capture", "listening", "conversation", "control"} <= set(names)
    assert all(s["status"] == "running" for s in names.values())
    assert body["brain"]["name"] == "offline"
    assert body["audio"]["output"] == "memory"
    assert body["version"] and body["uptime"] >= 0
    assert body["muted"] is False and body["mode"] == "always"


async def test_mute_and_unmute_publish_and_show_in_status(robot: Robot, api: httpx.AsyncClient):
    bus = robot.appliance.bus
    with bus.subscribe(MuteRequested, StateChanged, name="test") as sub:
        assert (await api.post("/v1/mute", json={})).json() == {"muted": True}
        first = await sub.receive.receive()
        assert first == MuteRequested(True, source="api")
        changed = await sub.receive.receive()
        assert isinstance(changed, StateChanged) and changed.new is State.MUTED
    status = (await api.get("/v1/listener/status")).json()
    assert status["muted"] is True and status["state"] == "muted"
    refused = await api.post("/v1/listener/start", json={})
    assert refused.status_code == 409
    assert (await api.post("/v1/unmute", json={})).json() == {"muted": False}
    assert (await api.get("/v1/status")).json()["muted"] is False


async def test_listener_start_and_stop_act_like_the_talk_button(robot: Robot, api: httpx.AsyncClient):
    from appliance.events import ListenReleased, ListenRequested

    with robot.appliance.bus.subscribe(ListenRequested, ListenReleased, name="test") as sub:
        started = await api.post("/v1/listener/start", json={})
        assert started.status_code == 200
        assert await sub.receive.receive() == ListenRequested(source="api")
        await api.post("/v1/listener/stop", json={})
        assert await sub.receive.receive() == ListenReleased(source="api")


async def test_volume_changes_the_speaker_gain_and_is_range_checked(robot: Robot, api: httpx.AsyncClient):
    assert (await api.post("/v1/volume", json={"volume": 0.25})).json() == {"volume": 0.25}
    assert robot.sink.volume == 0.25
    too_loud = await api.post("/v1/volume", json={"volume": 5})
    assert too_loud.status_code == 422
    assert too_loud.json()["detail"][0]["loc"] == ["body", "volume"]
    assert robot.sink.volume == 0.25


# --- speech, faces -----------------------------------------------------------------------------------------


async def test_say_speaks_through_the_conversation_with_its_face(robot: Robot, api: httpx.AsyncClient):
    from appliance.events import TurnFinished

    with robot.appliance.bus.subscribe(FaceRequested, TurnFinished, name="test") as sub:
        response = await api.post("/v1/say", json={"text": "Good morning.", "face": "joy"})
        assert response.status_code == 202
        assert response.json()["interrupt"] is False
        face = await sub.receive.receive()
        assert isinstance(face, FaceRequested) and face.name == "joy"
        finished = await sub.receive.receive()
        assert isinstance(finished, TurnFinished) and finished.outcome == "done"
        assert finished.spoken == "[face:joy] Good morning."
    assert robot.sink.blocks, "the line was played"


async def test_say_limits_and_bad_names(robot: Robot, api: httpx.AsyncClient):
    long = await api.post("/v1/say", json={"text": "a" * 201})
    assert long.status_code == 422 and "limit is 200" in long.json()["detail"][0]["msg"]
    blank = await api.post("/v1/say", json={"text": "   "})
    assert blank.status_code == 422
    tag_injection = await api.post("/v1/say", json={"text": "hi", "face": "joy][animation:x"})
    assert tag_injection.status_code == 422
    unknown = await api.post("/v1/say", json={"text": "hi", "colour": "red"})
    assert unknown.status_code == 422


async def test_interrupting_say_cancels_the_running_turn(tmp_path):
    async with running_robot(tmp_path, realtime=True) as robot, robot.client() as api:
        from appliance.events import TurnFinished, TurnStarted

        with robot.appliance.bus.subscribe(TurnStarted, TurnFinished, name="test") as sub:
            await api.post("/v1/say", json={"text": "This is a rather long sentence that takes a while to say."})
            assert isinstance(await sub.receive.receive(), TurnStarted)
            queued = (await api.post("/v1/say", json={"text": "Queued."})).json()
            assert queued["position"] == 1
            now = (await api.post("/v1/say", json={"text": "Stop!", "interrupt": True})).json()
            assert now["interrupt"] is True
            first = await sub.receive.receive()
            assert isinstance(first, TurnFinished) and first.outcome == "interrupted"
            outcomes = []
            while len(outcomes) < 2:
                event = await sub.receive.receive()
                if isinstance(event, TurnFinished):
                    outcomes.append(event.spoken)
            assert outcomes == ["Stop!", "Queued."]


async def test_face_animation_and_perform_publish_requests(robot: Robot, api: httpx.AsyncClient):
    from appliance.events import AnimationRequested

    with robot.appliance.bus.subscribe(FaceRequested, AnimationRequested, FaceChanged, name="test") as sub:
        assert (await api.post("/v1/face", json={"name": "surprised", "duration": 2})).json() == {"name": "surprised"}
        assert await sub.receive.receive() == FaceRequested("surprised", 2.0)
        assert await sub.receive.receive() == FaceChanged("surprised")
        await api.post("/v1/animation", json={"name": "wave"})
        assert await sub.receive.receive() == AnimationRequested("wave", None)
        performed = await api.post("/v1/perform", json={"face": "fun", "animation": "clap", "text": "Ta-da."})
        assert performed.status_code == 202 and performed.json()["say"]["id"]
        assert await sub.receive.receive() == FaceRequested("fun", None)
    empty = await api.post("/v1/perform", json={})
    assert empty.status_code == 422


async def test_face_png_is_a_png_of_the_current_face(robot: Robot, api: httpx.AsyncClient):
    await api.post("/v1/face", json={"name": "joy"})
    with trio.fail_after(5):
        while robot.appliance.faces.current != "joy":
            await trio.sleep(0.01)
    joy = await api.get("/v1/face.png")
    assert joy.headers["content-type"] == "image/png"
    assert joy.content.startswith(b"\x89PNG\r\n\x1a\n")
    await api.post("/v1/face", json={"name": "sorrow"})
    with trio.fail_after(5):
        while robot.appliance.faces.current != "sorrow":
            await trio.sleep(0.01)
    idat = lambda data: zlib.decompress(data[data.index(b"IDAT") + 4 :])  # noqa: E731
    # The display shows the new face from its next frame on.
    with trio.fail_after(5):
        while True:
            sorrow = await api.get("/v1/face.png")
            if idat(sorrow.content) != idat(joy.content):
                break
            await trio.sleep(0.02)
    assert sorrow.content.startswith(b"\x89PNG\r\n\x1a\n")


# --- conversation, cancel, histories -----------------------------------------------------------------------


async def test_conversation_streams_the_reply_in_order(robot: Robot, api: httpx.AsyncClient):
    async with api.stream("POST", "/v1/conversation", json={"text": "Are you there?", "audio": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await collect_sse(response, until="finished")
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "turn" and kinds[-1] == "finished"
    assert kinds.index("heard") < kinds.index("chunk") < kinds.index("speaking")
    data = dict(events)
    assert data["heard"] == {"text": "Are you there?"}
    assert data["chunk"]["tags"] == [{"name": "face", "value": "sorrow", "attributes": {}}]
    assert data["chunk"]["audio"]  # base64 WAV
    import base64

    assert base64.b64decode(data["chunk"]["audio"])[:4] == b"RIFF"
    assert data["finished"]["outcome"] == "done"
    assert data["finished"]["timings"]["first_audio"] is not None


async def test_conversation_without_interrupt_refuses_while_busy(tmp_path):
    async with running_robot(tmp_path, realtime=True) as robot, robot.client() as api:
        from appliance.events import TurnStarted

        with robot.appliance.bus.subscribe(TurnStarted, name="test") as sub:
            await api.post("/v1/say", json={"text": "A long line to keep the robot busy for a moment."})
            await sub.receive.receive()
        busy = await api.post("/v1/conversation", json={"text": "hello", "interrupt": False})
        assert busy.status_code == 409
        cancelled = await api.post("/v1/turn/cancel", json={})
        assert cancelled.json() == {"cancelled": True}
        assert (await api.post("/v1/turn/cancel", json={})).json() == {"cancelled": False}


async def test_histories_are_stored_listed_and_deleted(robot: Robot, api: httpx.AsyncClient):
    async with api.stream("POST", "/v1/conversation", json={"text": "Remember me"}) as response:
        await collect_sse(response, until="finished")
    with trio.fail_after(5):
        while not (await api.get("/v1/histories")).json()["histories"]:
            await trio.sleep(0.02)
    listing = (await api.get("/v1/histories")).json()["histories"]
    assert len(listing) == 1
    entry = listing[0]
    assert entry["current"] is True and entry["preview"] == "Remember me"
    full = (await api.get(f"/v1/histories/{entry['id']}")).json()
    assert full["turns"][0]["heard"] == "Remember me"
    assert "offline" in full["turns"][0]["spoken"] or full["turns"][0]["brain"] == "offline"
    stored = robot.config_path.parent / "state" / "histories" / f"{entry['id']}.jsonl"
    records = [json.loads(line) for line in stored.read_text().splitlines()]
    assert records[0]["t"] == "begin" and records[0]["heard"] == "Remember me"
    assert records[-1]["t"] == "end" and records[-1]["outcome"] == "done"
    assert (await api.delete(f"/v1/histories/{entry['id']}")).status_code == 204
    assert not stored.exists()
    assert robot.appliance.conversation.history.messages() == ()
    assert (await api.get(f"/v1/histories/{entry['id']}")).status_code == 404
    assert (await api.delete(f"/v1/histories/{entry['id']}")).status_code == 404
    assert (await api.get("/v1/histories/..%2Fetc")).status_code in (404, 422)


# --- config, devices, metrics ------------------------------------------------------------------------------


async def test_config_is_redacted(tmp_path):
    extra = '[tts]\nprovider = "openai"\napi_key = "sk-very-secret"\n'
    async with running_robot(tmp_path, extra=extra) as robot, robot.client() as api:
        body = (await api.get("/v1/config")).text
    assert "sk-very-secret" not in body and TOKEN not in body
    assert json.loads(body)["tts"]["api_key"] == "**********"


async def test_devices_lists_what_portaudio_sees(robot: Robot, api: httpx.AsyncClient):
    body = (await api.get("/v1/devices")).json()
    assert body["input"] == "simulated" and body["output"] == "memory"
    assert isinstance(body["devices"], list)


async def test_metrics_are_valid_prometheus_text(robot: Robot, api: httpx.AsyncClient):
    async with api.stream("POST", "/v1/conversation", json={"text": "count me"}) as response:
        await collect_sse(response, until="finished")
    with trio.fail_after(5):
        while robot.appliance.control.ctx.metrics.turns["done"] < 1:
            await trio.sleep(0.01)
    response = await api.get("/v1/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    turns = {s.labels["outcome"]: s.value for s in families["appliance_turns"].samples}
    assert turns["done"] >= 1
    stage = families["appliance_turn_stage_seconds"]
    counts = [s for s in stage.samples if s.name.endswith("_count") and s.labels["stage"] == "first_audio"]
    assert counts and counts[0].value >= 1
    assert "appliance_subsystem_restarts" in families
    assert "appliance_audio_xruns" in families


# --- limits ------------------------------------------------------------------------------------------------


async def test_body_size_cap_and_json_only(robot: Robot, api: httpx.AsyncClient):
    huge = await api.post(
        "/v1/say", content=b'{"text": "' + b"a" * 70_000 + b'"}', headers={"content-type": "application/json"}
    )
    assert huge.status_code == 413
    form = await api.post("/v1/say", content=b"text=hello", headers={"content-type": "text/plain"})
    assert form.status_code == 415
    broken = await api.post("/v1/say", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422


async def test_event_streams_are_capped(robot: Robot):
    async with robot.client() as api:
        async with trio.open_nursery() as nursery:
            opened = trio.Semaphore(0)

            async def hold() -> None:
                async with api.stream("GET", "/v1/events") as response:
                    assert response.status_code == 200
                    async for _ in response.aiter_lines():
                        opened.release()
                        await trio.sleep_forever()

            for _ in range(4):
                nursery.start_soon(hold)
            for _ in range(4):
                await opened.acquire()
            refused = await api.get("/v1/events")
            assert refused.status_code == 503
            nursery.cancel_scope.cancel()
        with trio.fail_after(5):  # the server notices the closed connections and frees their slots
            while robot.appliance.control.ctx.slots.open > 0:
                await trio.sleep(0.01)
        again = await api.post("/v1/conversation", json={"text": "free again"})
        assert again.status_code == 200


async def test_events_arrive_in_order(robot: Robot, api: httpx.AsyncClient):
    async with api.stream("GET", "/v1/events") as response:
        buffer: list[str] = []
        events: list[tuple[str, Any]] = []
        sent = False
        async for line in response.aiter_lines():
            buffer.append(line)
            if line != "":
                continue
            events.extend(parse_sse(iter(buffer)))
            buffer = []
            if not sent:
                assert events[0][0] == "hello"
                for name in ("joy", "fun", "sorrow", "surprised"):
                    robot.appliance.bus.publish(FaceChanged(name))
                sent = True
            faces = [data["name"] for kind, data in events if kind == "face_changed"]
            if len(faces) == 4:
                break
    assert faces == ["joy", "fun", "sorrow", "surprised"]


async def test_shutdown_with_open_streams_is_prompt(tmp_path):
    finished = False
    with trio.fail_after(10):
        async with trio.open_nursery() as outer:

            async def run() -> None:
                nonlocal finished
                async with running_robot(tmp_path) as robot, robot.client() as api:
                    streams = trio.Semaphore(0)

                    async def hold(path: str, body: Any = None) -> None:
                        async with api.stream("POST" if body else "GET", path, json=body) as response:
                            async for _ in response.aiter_lines():
                                streams.release()
                                await trio.sleep_forever()

                    async with trio.open_nursery() as clients:
                        for _ in range(3):
                            clients.start_soon(hold, "/v1/events")
                        for _ in range(3):
                            await streams.acquire()
                        # Shut the appliance down the way SIGTERM does, with three streams still open.
                        with trio.fail_after(2):
                            robot.appliance.supervisor.stop("test")
                            await robot.stopped.wait()
                        clients.cancel_scope.cancel()
                finished = True

            outer.start_soon(run)
    assert finished


async def test_ready_comes_after_the_port_is_bound(tmp_path):
    from appliance.app import build_appliance
    from appliance.config import load_config
    from appliance.systemd import Notifier
    from tests.fakes.control_robot import write_config

    path = write_config(tmp_path)
    notifier = Notifier({})
    appliance = build_appliance(
        load_config(path, environ={}), notifier=notifier, handle_signals=False, control=True, config_path=path
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(appliance.run)
        assert "READY=1" in notifier.sent
        # No waiting for anything: READY means the API already answers.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{appliance.control.port}") as client:
            assert (await client.get("/v1/health")).status_code == 200
        nursery.cancel_scope.cancel()


async def test_a_conversation_client_that_leaves_does_not_stop_the_robot(tmp_path):
    from appliance.events import TurnFinished

    async with running_robot(tmp_path, realtime=True) as robot, robot.client() as api:
        with robot.appliance.bus.subscribe(TurnFinished, name="test") as sub:
            async with api.stream("POST", "/v1/conversation", json={"text": "hello"}) as response:
                async for line in response.aiter_lines():
                    if line.startswith("event: turn"):
                        break  # hang up right after the turn started
            finished = await sub.receive.receive()
        assert isinstance(finished, TurnFinished) and finished.outcome == "done"
        with trio.fail_after(5):
            while robot.appliance.control.ctx.slots.open:
                await trio.sleep(0.01)


@pytest.mark.parametrize(
    ("path", "body", "loc", "listed"),
    [
        ("/v1/face", {"name": "grumpy"}, ["body", "name"], "sorrow"),
        ("/v1/animation", {"name": "moonwalk"}, ["body", "name"], "wave"),
        ("/v1/say", {"text": "hi", "face": "grumpy"}, ["body", "face"], "joy"),
        ("/v1/perform", {"animation": "moonwalk"}, ["body", "animation"], "clap"),
    ],
)
async def test_unknown_faces_and_animations_are_refused_with_the_known_names(
    robot: Robot, api: httpx.AsyncClient, path: str, body: dict[str, Any], loc: list[str], listed: str
):
    from appliance.events import AnimationRequested

    with robot.appliance.bus.subscribe(FaceRequested, AnimationRequested, name="test") as sub:
        refused = await api.post(path, json=body)
        assert refused.status_code == 422
        (problem,) = refused.json()["detail"]
        assert problem["loc"] == loc and listed in problem["msg"] and listed in problem["ctx"]["known"]
        assert sub.receive.statistics().current_buffer_used == 0  # nothing was published
    assert robot.appliance.conversation.turns == 0
    alias = await api.post("/v1/face", json={"name": "Happy"})  # an alias, any case, is a known face
    assert alias.status_code == 200


async def test_docs_page_loads_only_files_the_robot_serves(robot: Robot, api: httpx.AsyncClient) -> None:
    """/docs works without internet: every script, style sheet and icon it names is served from here."""
    page = await api.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") for s in sources), sources  # no CDN, no other host
    for source in sources:
        asset = await api.get(source)
        assert asset.status_code == 200, source
        assert len(asset.content) > 500
    script = await api.get("/docs/swagger-ui-bundle.js")
    assert script.headers["content-type"].startswith("text/javascript") and b"SwaggerUIBundle" in script.content
    assert (await api.get("/docs/../../etc/passwd")).status_code == 404
    assert (await api.get("/docs/swagger-ui-bundle.js.map")).status_code == 404
    async with robot.client(token=None) as stranger:
        assert (await stranger.get("/docs/swagger-ui.css")).status_code == 401  # the token, as for the page
