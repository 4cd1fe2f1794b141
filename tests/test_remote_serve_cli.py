"""``appliance serve`` as a real process: the cloud pipeline (on the fake cloud) behind the AIAvatarKit protocol."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from appliance.turns import ReplyChunk
from tests.fakes.cloud import fake_cloud
from tests.http_serve_helpers import serve_url, start_serve
from tests.remote_helpers import collect, heard, remote, request, speech


async def test_appliance_serve_answers_a_robot(tmp_path: Path) -> None:
    async with fake_cloud() as cloud:
        process = await start_serve(tmp_path, cloud.url, "secret-key")
        try:
            url, _ = await serve_url(process)
            items = await collect(remote(url), request(None, audio=speech(0.5)))
        finally:
            process.send_signal(signal.SIGTERM)  # what systemd sends
            with trio.fail_after(10):
                code = await process.wait()
    assert heard(items) == ["What time is it?"]
    assert next(i.voice_text for i in items if isinstance(i, ReplyChunk)) == "It is nine o'clock."
    assert code == 0
