"""Promises the README makes that no other test could catch losing: the spoken error line, a key that a
provider echoes back, and watchdog pings that stop when the event loop does."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import trio
import trio.lowlevel

from appliance.app import build_appliance
from appliance.audio.base import Audio, AudioClip, LevelCallback
from appliance.audio.playback import MemorySink
from appliance.bus import EventBus
from appliance.config import load_config
from appliance.conversation.local_voice import LocalVoice
from appliance.events import State, StateChanged, TurnFinished
from appliance.settings.conversation import ConversationConfig
from appliance.settings.system import SupervisorConfig
from appliance.supervisor import Supervisor
from appliance.systemd import Notifier
from appliance.turns import Utterance
from tests.fakes.cloud import fake_cloud
from tests.harness import cloud_config, running_appliance

SPEECH = Utterance(audio=AudioClip.silence(0.6))


class ClipSink(MemorySink):
    """Keeps every clip it was asked to play, whole."""

    def __init__(self) -> None:
        super().__init__(realtime=False)
        self.clips: list[AudioClip] = []

    async def play(self, audio: Audio, on_level: LevelCallback | None = None) -> None:
        if isinstance(audio, AudioClip):
            self.clips.append(audio)
        await super().play(audio, on_level)


@pytest.mark.parametrize("fault", ["llm", "stt"])
async def test_a_failed_turn_speaks_the_error_line(fault: str) -> None:
    sink = ClipSink()
    async with fake_cloud() as cloud:
        getattr(cloud, fault).status = 500
        config = cloud_config(cloud.url, conversation__error_display=0.3)
        async with running_appliance(config, sink=sink) as (app, log):
            await app.conversation.start_turn(SPEECH)
            failed = await log.wait_for(TurnFinished)
            await log.wait_for(StateChanged, lambda e: e.old is State.ERROR and e.new is State.IDLE, timeout=10)
    assert failed.outcome == "failed"
    assert "/v1/audio/speech" not in cloud.paths()  # nothing of a reply was synthesized
    expected = await LocalVoice().say(ConversationConfig().error_message)
    assert expected is not None and expected.duration > 0.5
    # Exactly one thing was said: the error line, sample for sample.
    assert len(sink.clips) == 1
    assert sink.clips[0].sample_rate == expected.sample_rate
    assert np.array_equal(sink.clips[0].samples, expected.samples)
    assert sink.played_samples > 0


KEY = "sk-proj-SECRET4242abcdefghijklmnop"


async def test_a_provider_error_carrying_the_key_never_shows_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Real APIs echo a bad key back ("Incorrect API key provided: sk-..."): it must not reach the logs, the
    events, or any answer of the control API."""
    caplog.set_level(logging.DEBUG)
    async with fake_cloud() as cloud:
        cloud.llm.status = 401
        cloud.llm.message = f"Incorrect API key provided: {KEY}. You can find your API key at https://example."
        cloud.stt.status = 401
        cloud.stt.message = f"Incorrect API key provided: {KEY}."
        path = tmp_path / "appliance.toml"
        sections = "".join(
            f'[{name}]\nbase_url = "{cloud.url}/v1"\napi_key = "{KEY}"\n' for name in ("stt", "llm", "tts")
        )
        path.write_text(
            f'[control]\nport = 0\nstate_dir = "{tmp_path / "state"}"\n'
            '[audio]\ninput = "simulated"\noutput = "simulated"\nsimulated_speech_after = 1000.0\n'
            '[gpio]\npin_factory = "mock"\n[log]\nstatus_line = "off"\n'
            '[conversation]\nbrain = "cloud"\nerror_display = 0.2\n' + sections
        )
        config = load_config(path, environ={})
        sink = MemorySink(realtime=False)
        app = build_appliance(
            config, sink=sink, notifier=Notifier({}), handle_signals=False, control=True, config_path=path
        )
        events: list[object] = []
        answers: list[str] = []
        async with trio.open_nursery() as nursery:

            async def record(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with app.bus.subscribe(name="test", size=10_000) as sub:
                    task_status.started()
                    async for event in sub:
                        events.append(event)

            await nursery.start(record)
            await nursery.start(app.run)
            with trio.fail_after(15):  # a hang guard
                await app.control.bound.wait()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.control.port}", timeout=10) as api:
                answer = await api.post("/v1/conversation", json={"text": "what time is it"})
                answers.append(answer.text)
                await app.conversation.start_turn(SPEECH)  # through speech-to-text too
                with trio.fail_after(20):
                    while sum(isinstance(e, TurnFinished) for e in events) < 2:
                        await trio.sleep(0.05)
                for route in (
                    "/v1/status",
                    "/v1/health",
                    "/v1/listener/status",
                    "/v1/config",
                    "/v1/metrics",
                    "/v1/histories",
                ):
                    answers.append((await api.get(route)).text)
            nursery.cancel_scope.cancel()
    failures = [e for e in events if isinstance(e, TurnFinished)]
    assert [e.outcome for e in failures] == ["failed", "failed"], failures
    assert all(e.error for e in failures)  # the failure is reported, only without the key
    # The provider really did send the key back (or this test proves nothing).
    assert cloud.paths().count("/v1/chat/completions") >= 1 and "/v1/audio/transcriptions" in cloud.paths()
    assert len(answers) == 7
    for text in answers:
        assert KEY not in text
    for event in events:
        assert KEY not in repr(event), event
    logged = "\n".join(r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records)
    assert KEY not in logged
    assert KEY not in caplog.text


async def test_a_blocked_event_loop_stops_the_watchdog_pings_until_it_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd kills a hung loop only if the pings come from the loop itself: block the loop from a thread,
    see the pings stop, let it go, see them come back."""
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    pings: list[float] = []  # when each WATCHDOG=1 arrived, stamped by a thread the loop does not run
    listening = threading.Event()
    listening.set()

    def listen() -> None:
        while listening.is_set():
            try:
                data = receiver.recv(4096)
            except TimeoutError:
                continue
            if b"WATCHDOG=1" in data:
                pings.append(time.monotonic())

    blocked: dict[str, float] = {}

    def hang_the_loop() -> None:  # runs *on* the Trio thread: nothing else of the loop runs meanwhile
        blocked["from"] = time.monotonic()
        time.sleep(1.0)
        blocked["to"] = time.monotonic()

    def wait_pings(count: int, after: float) -> None:
        deadline = time.monotonic() + 20  # a hang guard, not a timing check
        while sum(p > after for p in pings) < count:
            assert time.monotonic() < deadline, f"fewer than {count} pings: {pings}"
            time.sleep(0.01)

    token = trio.lowlevel.current_trio_token()

    def drive() -> None:
        wait_pings(3, 0.0)
        trio.from_thread.run_sync(hang_the_loop, trio_token=token)
        wait_pings(3, blocked["to"])

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        supervisor = Supervisor(EventBus(), SupervisorConfig(), Notifier(), handle_signals=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await trio.to_thread.run_sync(drive)
            nursery.cancel_scope.cancel()
    finally:
        listening.clear()
        thread.join()
        receiver.close()
    during = [p for p in pings if blocked["from"] < p < blocked["to"]]
    # A ping already on its way when the loop froze may land inside; at 50 ms a running loop would send ~20.
    assert len(during) <= 1, (during, blocked)
    assert sum(p < blocked["from"] for p in pings) >= 3
    assert sum(p > blocked["to"] for p in pings) >= 3  # and they resumed


@pytest.mark.parametrize(
    "message",
    [
        f"Incorrect API key provided: {KEY}.",
        "bad header Authorization: Bearer abcdef0123456789xyz",
        "key=AIzaSyA1234567890abcdefghijklmnop rejected",
        "sk-ant-api03-" + "x" * 40,
    ],
)
def test_provider_errors_blot_out_anything_shaped_like_a_key(message: str) -> None:
    from appliance.errors import ProviderRejected

    error = ProviderRejected("openai-llm", message)
    assert "[redacted]" in str(error)
    for secret in (KEY, "abcdef0123456789xyz", "AIzaSyA1234567890abcdefghijklmnop", "x" * 40):
        assert secret not in str(error)
        assert secret not in error.message


def test_a_configured_key_of_any_shape_is_blotted_out() -> None:
    from appliance.config import AppConfig
    from appliance.errors import ProviderRejected

    AppConfig.model_validate({"tts": {"api_key": "plainkey-7788"}})
    assert "plainkey-7788" not in str(ProviderRejected("tts", "your key plainkey-7788 has expired"))


async def test_a_listener_behind_real_time_still_lets_the_loop_run() -> None:
    """Blocks always waiting (a consumer slower than the microphone) must not starve the other tasks: the
    watchdog ping and SIGTERM handling live on the same loop."""
    from appliance.audio.base import YIELD_EVERY, BlockQueue

    queue = BlockQueue(max_blocks=100)
    for _ in range(100):
        queue.put_nowait(np.zeros(320, dtype=np.int16))
    others_ran = 0

    async def other() -> None:
        nonlocal others_ran
        while True:
            others_ran += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        before = others_ran
        for _ in range(50):  # always a block waiting: get() never has to park
            await queue.get()
            queue.put_nowait(np.zeros(320, dtype=np.int16))
        # The other task got a turn every YIELD_EVERY blocks (one less: trio may order the last batch either way).
        assert others_ran - before >= 50 // YIELD_EVERY - 1
        nursery.cancel_scope.cancel()
