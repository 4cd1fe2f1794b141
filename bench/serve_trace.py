"""Where a 10-robot burst's first audio goes: a per-stage trace of ``appliance serve`` (not part of ``make bench``).

``python -m bench.serve_trace`` starts the lean fake cloud, one ``appliance serve`` (PCM mode) from this checkout
(or ``SERVE_TRACE_TREE``) with timestamps added around its hot path, and 10 robots (processes of their own, the
AIAvatarKit protocol), then runs ``SERVE_TRACE_BURSTS`` bursts of all ten talking at once after one untimed.
Per robot and turn, in ms after that robot's ``invoke`` left: the frame read by the server, its turn task
running, each cloud request written and its answer's head read (speech recognition, chat, the first
sentence's speech), the first sentence complete, the first audio written, and the first audio at the robot.
It prints each stage's min / median / p95 / max and the step from one stage to the next: the step whose p95
grows is where robots queue. Then the CPU time per turn of the server, the fake cloud and the robots.

Timestamps are ``time.perf_counter`` (CLOCK_MONOTONIC, one clock for every process on the machine); the
server's are kept in memory and written when it stops. The wrappers cost the server some CPU: compare traces
with traces, not with ``bench serve``'s figures.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from bench.bench_serve import API_KEY, PCM_B64, ROOT, cpu_seconds, open_session, start_cloud
from bench.common import percentile
from tests.fakes.tcp import read_until

ROBOTS = int(os.environ.get("SERVE_TRACE_ROBOTS", 10))
BURSTS = int(os.environ.get("SERVE_TRACE_BURSTS", 12))
TREE = Path(os.environ.get("SERVE_TRACE_TREE", ROOT))
STAGES = [
    "frame_in",
    "turn_task",
    "transcriptions_req",
    "transcriptions_head",
    "completions_req",
    "completions_head",
    "sentence",
    "speech_req",
    "speech_head",
    "audio_send",
]


def traced_server(out: str) -> None:
    """Run ``appliance serve`` (argv) with marks around its hot path; the marks go to ``out`` at exit."""
    from appliance.brains import speech_queue
    from appliance.cli import main
    from appliance.providers import lean_http
    from appliance.server import avatar, frames, outbox

    events: list[tuple[str | None, str, float]] = []
    robot: contextvars.ContextVar[str | None] = contextvars.ContextVar("robot", default=None)

    def mark(what: str, who: str | None = None) -> None:
        events.append((who or robot.get(), what, time.perf_counter()))

    atexit.register(lambda: Path(out).write_text(json.dumps(events)))

    def around(owner: Any, name: str, before: Any, after: Any = None) -> None:
        original = getattr(owner, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            state = before(*args)
            result = await original(*args, **kwargs)
            if after is not None:
                after(state)
            return result

        setattr(owner, name, wrapper)

    def message_in(self: Any, ws: Any, message: Any, *rest: Any) -> None:
        if isinstance(message, str) and '"invoke"' in message[:200]:
            mark("frame_in", json.loads(message)["session_id"])

    def turn(self: Any, ws: Any, session: Any, *rest: Any) -> None:
        robot.set(session.session_id)  # a turn's tasks (the brain's, its syntheses') inherit it
        mark("turn_task")

    def request(self: Any, data: bytes, *rest: Any) -> str:
        kind = data[: data.index(b" HTTP")].rsplit(b"/", 1)[-1].decode()
        mark(kind + "_req")
        return kind

    def written(ws: Any, texts: list[str]) -> None:
        if any('"audio_data": "' in text for text in texts):
            mark("audio_send")

    around(avatar.AvatarServer, "_on_message", message_in)
    around(avatar.AvatarServer, "_turn", turn)
    around(lean_http._Connection, "exchange", request, lambda kind: mark(kind + "_head"))
    around(speech_queue.SpeechQueue, "add", lambda *args: mark("sentence"))
    around(frames, "send_texts", written)
    outbox.send_texts = frames.send_texts  # type: ignore[attr-defined]
    sys.argv = ["appliance", *sys.argv[3:]]
    raise SystemExit(main())


async def robot(url: str) -> None:
    """One robot: on each line of stdin one turn; answers its send, first audio and final (absolute times)."""
    async with AsyncExitStack() as stack:
        ws, session = await open_session(url, stack)

        async def turn() -> dict[str, Any]:
            frame = json.dumps({"type": "invoke", "session_id": session, "audio_data": PCM_B64})
            sent = time.perf_counter()
            await ws.send_message(frame)
            first, accepted = None, False
            while True:
                reply = json.loads(await ws.get_message())
                now = time.perf_counter()
                if not accepted:  # what is left of the turn before
                    accepted = reply.get("type") == "accepted"
                    continue
                if first is None and reply.get("type") == "chunk" and reply.get("audio_data"):
                    first = now
                if reply.get("type") in ("final", "error", "canceled"):
                    return {"sid": session, "sent": sent, "first": first, "ok": reply["type"] == "final"}

        await turn()
        print(json.dumps("ready"), flush=True)
        stdin, pending = trio.lowlevel.FdStream(os.dup(0)), b""
        while (line := await read_until(stdin, pending, b"\n")) is not None:
            pending = line[1]
            print(json.dumps(await turn()), flush=True)


async def start_server(cloud: str, tmp: Path) -> tuple[trio.Process, str]:
    config = tmp / "serve.toml"
    config.write_text(
        f'[stt]\nbase_url = "{cloud}/v1"\n[llm]\nbase_url = "{cloud}/v1"\nmodel = "fake"\n'
        f'[tts]\nbase_url = "{cloud}/v1"\n[server]\nhost = "127.0.0.1"\nport = 0\npcm = true\n[log]\nlevel = "WARNING"\n'
    )
    env = {**os.environ, "OPENAI_API_KEY": "fake-key", "APPLIANCE_SERVER__API_KEY": API_KEY, "PYTHONPATH": str(TREE)}
    args = [sys.executable, str(Path(__file__)), "--server", str(tmp / "marks.json")]
    args += ["--config", str(config), "serve", "--log-level", "INFO"]
    server = await trio.lowlevel.open_process(args, cwd=TREE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert server.stdout is not None
    seen = b""
    while not (match := re.search(rb"ws://127\.0\.0\.1:(\d+)/ws", seen)):
        data = await server.stdout.receive_some(4096)
        if not data:
            raise RuntimeError("serve exited: " + seen.decode(errors="replace")[-2000:])
        seen += data
    return server, f"ws://127.0.0.1:{int(match.group(1))}/ws"


async def bursts(tmp: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    cloud, clouds = await start_cloud(4)
    server, url = await start_server(cloud, tmp)
    args = [sys.executable, "-m", "bench.serve_trace", "--robot", url]
    robots = [
        [await trio.lowlevel.open_process(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE), b""]
        for _ in range(ROBOTS)
    ]

    async def answer(robot: list[Any]) -> Any:
        data, robot[1] = await read_until(robot[0].stdout, robot[1], b"\n")
        return json.loads(data)

    def cpu() -> dict[str, float]:
        return {
            "server": cpu_seconds(server.pid),
            "fake cloud": sum(cpu_seconds(c.pid) for c in clouds),
            "robots": sum(cpu_seconds(r[0].pid) for r in robots),
        }

    turns: list[dict[str, Any]] = []
    spent = dict.fromkeys(cpu(), 0.0)
    try:
        for robot_ in robots:
            await answer(robot_)
        for index in range(BURSTS + 1):  # the first untimed: it opens the server's pools
            before = cpu()
            for robot_ in robots:
                await robot_[0].stdin.send_all(b"go\n")
            burst = [await answer(robot_) for robot_ in robots]
            if index:
                turns += burst
                spent = {who: spent[who] + cpu()[who] - before[who] for who in spent}
            await trio.sleep(0.3)
        server.send_signal(signal.SIGINT)  # its marks are written as it exits
        with trio.fail_after(10):
            await server.wait()
    finally:
        for process in [server, *clouds, *(r[0] for r in robots)]:
            if process.returncode is None:
                process.kill()
    return turns, {who: seconds / max(1, len(turns)) * 1000 for who, seconds in spent.items()}


def report(turns: list[dict[str, Any]], marks: list[list[Any]], cpu: dict[str, float]) -> None:
    by_robot: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    for who, what, when in marks:
        by_robot[who].append((what, when))
    after: dict[str, list[float]] = collections.defaultdict(list)  # ms after the robot's send
    steps: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    sends: dict[str, list[float]] = collections.defaultdict(list)
    for turn in turns:
        sends[turn["sid"]].append(turn["sent"])
    for turn in turns:
        if turn["first"] is None:
            continue
        # This turn's marks: from its send to the same robot's next one.
        limit = next((s for s in sorted(sends[turn["sid"]]) if s > turn["sent"]), float("inf"))
        seen = {"sent": turn["sent"]}
        for what, when in by_robot[turn["sid"]]:
            if turn["sent"] <= when < limit:
                seen.setdefault(what, when)
        seen["first audio at the robot"] = turn["first"]
        chain = [stage for stage in ["sent", *STAGES, "first audio at the robot"] if stage in seen]
        for stage in chain[1:]:
            after[stage].append((seen[stage] - turn["sent"]) * 1000)
        for a, b in itertools.pairwise(chain):
            steps[(a, b)].append((seen[b] - seen[a]) * 1000)

    def row(name: str, values: list[float]) -> str:
        return (
            f"  {name:48s} {min(values):7.1f} {statistics.median(values):7.1f} "
            f"{percentile(values, 95):7.1f} {max(values):7.1f}"
        )

    print(f"  {'ms after the robot sent its invoke':48s} {'min':>7s} {'median':>7s} {'p95':>7s} {'max':>7s}")
    for stage in [*STAGES, "first audio at the robot"]:
        if after[stage]:
            print(row(stage, after[stage]))
    print(f"\n  {'step':48s} {'min':>7s} {'median':>7s} {'p95':>7s} {'max':>7s}")
    chain = ["sent", *STAGES, "first audio at the robot"]
    for (a, b), values in sorted(steps.items(), key=lambda item: chain.index(item[0][0])):
        print(row(f"{a} -> {b}", values))
    print("\n  CPU per turn: " + ", ".join(f"{who} {ms:.2f} ms" for who, ms in cpu.items()))
    print(f"  {len(turns)} turns, load {os.getloadavg()[0]:.1f}")


def main() -> None:
    with tempfile.TemporaryDirectory() as name:
        turns, cpu = trio.run(bursts, Path(name))
        report(turns, json.loads((Path(name) / "marks.json").read_text()), cpu)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--server"]:
        traced_server(sys.argv[2])
    elif sys.argv[1:2] == ["--robot"]:
        trio.run(robot, sys.argv[2])
    else:
        main()
