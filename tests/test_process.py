"""The real process: sd_notify messages, SIGTERM in the middle of a reply, exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from appliance.audio.convert import read_wav
from tests.fakes.cloud import fake_cloud

REPO = Path(__file__).resolve().parent.parent
READY_BOUND = 20.0  # s from exec to READY=1


class NotifySocket:
    """What systemd would receive on NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self.changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind(str(self.path))
            task_status.started()
            while True:
                data = await sock.recv(4096)
                self.messages.extend(data.decode().splitlines())
                self.changed.set()
                self.changed = trio.Event()

    async def wait_for(self, prefix: str, timeout: float = 30) -> None:
        with trio.fail_after(timeout):
            while not any(m.startswith(prefix) for m in self.messages):
                await self.changed.wait()


def appliance_env(url: str, tmp_path: Path, speech: Path, notify: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "NOTIFY_SOCKET": str(notify),
        "WATCHDOG_USEC": "400000",
        "OPENAI_API_KEY": "test-key",
        "APPLIANCE_CONVERSATION__BRAIN": "cloud",
        "APPLIANCE_STT__BASE_URL": f"{url}/v1",
        "APPLIANCE_LLM__BASE_URL": f"{url}/v1",
        "APPLIANCE_TTS__BASE_URL": f"{url}/v1",
        "APPLIANCE_AUDIO__INPUT": "file",
        "APPLIANCE_AUDIO__INPUT_FILE": str(speech),
        "APPLIANCE_AUDIO__OUTPUT": "file",
        "APPLIANCE_AUDIO__OUTPUT_FILE": str(tmp_path / "spoken.wav"),
        "APPLIANCE_GPIO__PIN_FACTORY": "mock",
        "APPLIANCE_LOG__STATUS_LINE": "off",
    }


async def test_ready_watchdog_and_clean_stop_on_sigterm_mid_reply(tmp_path: Path, speech_wav: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    reply = "[face:joy] " + " ".join(f"This is a rather long sentence number {i}." for i in range(20))
    async with fake_cloud(reply=reply, seconds_per_char=0.03) as cloud, trio.open_nursery() as nursery:
        await nursery.start(notify.run)
        env = appliance_env(cloud.url, tmp_path, speech_wav, notify.path)
        launched = trio.current_time()
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "appliance", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output = bytearray()

        async def collect() -> None:
            assert process.stdout is not None
            async for data in process.stdout:
                output.extend(data)

        nursery.start_soon(collect)
        try:
            await notify.wait_for("READY=1")
            to_ready = trio.current_time() - launched
            await notify.wait_for("WATCHDOG=1")
            with trio.fail_after(30):  # the reply is being spoken when the speech requests arrive
                while "/v1/audio/speech" not in cloud.paths():
                    await trio.sleep(0.02)
            await notify.wait_for("STATUS=speaking")
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):  # a hang guard; the stop time itself is measured by `make bench`
                code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
        nursery.cancel_scope.cancel()
    log = output.decode(errors="replace")
    # A sanity bound on start -> READY (interpreter, imports, every service started), loose enough for a
    # loaded CI box; the figure itself (<= 1.5 s) is `python -m bench skeleton`'s.
    assert to_ready < READY_BOUND, f"READY=1 came {to_ready:.1f} s after the start\n{log}"
    assert code == 0, log
    assert "STOPPING=1" in notify.messages
    assert notify.messages.index("READY=1") < notify.messages.index("STOPPING=1")
    assert "stopped (SIGTERM)" in log
    assert "Traceback" not in log
    assert read_wav(tmp_path / "spoken.wav").duration > 0  # what was spoken was written whole


def test_keyboard_interrupt_style_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "APPLIANCE_AUDIO__INPUT": "simulated",
        "APPLIANCE_AUDIO__OUTPUT": "simulated",
        "APPLIANCE_GPIO__PIN_FACTORY": "mock",
        "APPLIANCE_LOG__STATUS_LINE": "off",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "ready:" in line:
                break
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=10)
    finally:
        process.kill()
    assert code == 0
