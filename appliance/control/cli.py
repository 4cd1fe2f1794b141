"""``appliance status | mute | unmute | volume | listen | face | animation | perform | ask | cancel |
histories | config | events | metrics``: the control API from the terminal.

Output is short human text by default and the API's JSON with ``--json``. Exit codes: 0 done, 1 the
API said no (or is not running), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client pulls in httpx: only the commands that talk to the API pay for it
    from appliance.control.client import ControlClient

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

COMMANDS = {
    "status",
    "health",
    "mute",
    "unmute",
    "volume",
    "listen",
    "face",
    "animation",
    "perform",
    "ask",
    "cancel",
    "histories",
    "config",
    "events",
    "metrics",
}


def add_commands(sub: Any) -> None:
    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        return parser

    command("status", "what the running appliance is doing")
    command("health", "is the appliance up (exit 0) or not (exit 1)")
    command("mute", "stop listening (the robot still speaks when asked)")
    command("unmute", "listen again")
    volume = command("volume", "set the output gain now (0.0-2.0)")
    volume.add_argument("volume", type=float)
    listen = command("listen", "open the microphone for one utterance, or end it")
    listen.add_argument("action", choices=["start", "stop", "status"], nargs="?", default="start")
    for name in ("face", "animation"):
        p = command(name, f"show {'an' if name[0] in 'aeiou' else 'a'} {name} (unknown names are refused)")
        p.add_argument("name")
        p.add_argument("--duration", type=float, help="seconds")
    perform = command("perform", "face + animation + line in one")
    perform.add_argument("text", nargs="?")
    perform.add_argument("--face")
    perform.add_argument("--animation")
    perform.add_argument("--interrupt", action="store_true")
    ask = command("ask", "say something to the robot as text and print its reply as it speaks")
    ask.add_argument("text")
    command("cancel", "stop the running turn (barge-in)")
    histories = command("histories", "list conversations, show one, or delete one")
    histories.add_argument("id", nargs="?")
    histories.add_argument("--delete", action="store_true")
    config = command("config", "show the running configuration, or change settings: config set a.b=1 ...")
    config.add_argument("action", choices=["show", "set"], nargs="?", default="show")
    config.add_argument("assignments", nargs="*", help="section.key=value (JSON values; null = default)")
    command("events", "print events as they happen (Ctrl+C to stop)")
    command("metrics", "print the Prometheus metrics")


def _client(config: Any, args: argparse.Namespace) -> ControlClient:
    from appliance.control.client import ControlClient

    return ControlClient.from_config(config.control, getattr(args, "url", None), getattr(args, "token", None))


def say_through_api(config: Any, args: argparse.Namespace) -> int | None:
    """Speak through the running appliance; None means none is running and the caller speaks locally."""
    from appliance.control.client import ApiError

    try:
        client = _client(config, args)
    except Exception as exc:  # noqa: BLE001  a broken token file
        print(f"control API: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with client:
        if not args.api and not client.running():
            print(f"(no appliance at {client.url}; speaking locally)", file=sys.stderr)
            return None
        body = {"text": args.text, "interrupt": args.interrupt, "face": args.face, "animation": args.animation}
        try:
            result = client.request("POST", "/say", {k: v for k, v in body.items() if v not in (None, False)})
        except ApiError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FAILED
        where = "now" if result["position"] == 0 else f"queued #{result['position']}"
        print(f"saying ({where}), id {result['id']}")
        try:
            output = client.request("GET", "/status")["audio"]["output"]
        except (ApiError, KeyError, TypeError):
            output = None
        if output in ("simulated", "memory"):  # a speaker nobody hears
            print(f"note: the appliance has no sound card ({output} output); nothing will be heard", file=sys.stderr)
    return EXIT_OK


def run_command(command: str, config: Any, args: argparse.Namespace) -> int:
    from appliance.control.client import ApiError, NotRunning

    try:
        client = _client(config, args)
    except Exception as exc:  # noqa: BLE001
        print(f"control API: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client:
            return _dispatch(command, client, args)
    except NotRunning as exc:
        print(f"{exc}\n(is `appliance run` going? is [control] enabled?)", file=sys.stderr)
        return EXIT_FAILED
    except ApiError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK


def _dispatch(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    handler = _VERBS.get(command)
    if handler is None:
        raise ValueError(f"unknown command {command}")
    return handler(command, client, args)


def _show(args: argparse.Namespace, result: Any, text: Callable[[Any], str]) -> int:
    print(json.dumps(result, indent=2, ensure_ascii=False) if getattr(args, "json", False) else text(result))
    return EXIT_OK


def _status(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    return _show(args, client.request("GET", "/status"), _status_text)


def _health(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    return _show(args, client.request("GET", "/health"), lambda r: f"{r['status']} (up {r['uptime']:.0f} s)")


def _mute(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    return _show(args, client.request("POST", f"/{command}"), lambda r: "muted" if r["muted"] else "listening")


def _volume(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    return _show(args, client.request("POST", "/volume", {"volume": args.volume}), lambda r: f"volume {r['volume']}")


def _listen(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    result = client.request("GET" if args.action == "status" else "POST", f"/listener/{args.action}")
    if args.action != "status":
        result = _settled(client, result, want_listening=args.action == "start")
    return _show(args, result, lambda r: f"{r['state']} (mode {r['mode']}{', muted' if r['muted'] else ''})")


def _shown(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    body = {"name": args.name, **({"duration": args.duration} if args.duration else {})}
    return _show(args, client.request("POST", f"/{command}", body), lambda r: f"{command}: {r['name']}")


def _perform(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    body = {"text": args.text, "face": args.face, "animation": args.animation, "interrupt": args.interrupt}
    given = {k: v for k, v in body.items() if v not in (None, False)}
    return _show(args, client.request("POST", "/perform", given), lambda r: "performing")


def _cancel(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    result = client.request("POST", "/turn/cancel")
    return _show(args, result, lambda r: "cancelled" if r["cancelled"] else "nothing was running")


def _histories(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    if args.id and args.delete:
        client.request("DELETE", f"/histories/{args.id}")
        print(f"deleted {args.id}")
        return EXIT_OK
    if args.id:
        return _show(args, client.request("GET", f"/histories/{args.id}"), _history_text)
    return _show(args, client.request("GET", "/histories"), _histories_text)


def _config(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    if args.action == "set":
        if not args.assignments:
            raise ValueError("config set needs section.key=value arguments")
        from appliance.control.client import parse_assignments

        return _show(args, client.request("PATCH", "/config", parse_assignments(args.assignments)), _patched_text)
    return _show(args, client.request("GET", "/config"), lambda r: json.dumps(r, indent=2))


def _metrics(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    print(client.request("GET", "/metrics"), end="")
    return EXIT_OK


def _events(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    for kind, data in client.stream("GET", "/events"):
        fields = data if isinstance(data, dict) else {"data": data}
        line = json.dumps({"event": kind, **fields}, ensure_ascii=False) if as_json else _event_text(kind, fields)
        print(line, flush=True)
    return EXIT_OK


def _ask(command: str, client: ControlClient, args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    for kind, data in client.stream("POST", "/conversation", {"text": args.text}):
        if as_json:
            print(json.dumps({"event": kind, **(data if isinstance(data, dict) else {"data": data})}), flush=True)
        elif kind == "chunk":
            print(data["voice_text"], flush=True)
        elif kind == "finished":
            print(_finished_text(data), file=sys.stderr)
            return EXIT_OK if data["outcome"] == "done" else EXIT_FAILED
        elif kind in ("overflow", "error"):
            print(f"{kind}: {data}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


_VERBS: dict[str, Callable[[str, ControlClient, argparse.Namespace], int]] = {
    "status": _status,
    "health": _health,
    "mute": _mute,
    "unmute": _mute,
    "volume": _volume,
    "listen": _listen,
    "face": _shown,
    "animation": _shown,
    "perform": _perform,
    "cancel": _cancel,
    "histories": _histories,
    "config": _config,
    "metrics": _metrics,
    "events": _events,
    "ask": _ask,
}


def _settled(client: ControlClient, result: Any, *, want_listening: bool, tries: int = 10) -> Any:
    """The listener's status once the request took effect (it is an event the appliance handles a moment
    later), so ``listen`` and ``listen status`` say the same thing."""
    import time

    for _ in range(tries):
        if not isinstance(result, dict) or result.get("listening") == want_listening or result.get("muted"):
            break
        time.sleep(0.05)
        result = client.request("GET", "/listener/status")
    return result


def _finished_text(data: dict[str, Any]) -> str:
    """``(done, first audio 0.8 s)``, or why a turn failed: ``(failed: openai-stt: cannot connect: ...)``."""
    outcome = str(data.get("outcome"))
    if outcome != "done" and data.get("error"):
        outcome += f": {data['error']}"
    first_audio = (data.get("timings") or {}).get("first_audio")
    return f"({outcome}{'' if first_audio is None else f', first audio {first_audio} s'})"


def _event_text(kind: str, data: dict[str, Any]) -> str:
    """One event as a line people read: ``19:02:11 state_changed  old=idle new=listening``."""
    import time

    def value(v: Any) -> str:
        if isinstance(v, str) and v and not any(c.isspace() or c in '="' for c in v):
            return v
        return json.dumps(v, ensure_ascii=False)

    fields = " ".join(f"{k}={value(v)}" for k, v in data.items() if v is not None)
    return f"{time.strftime('%H:%M:%S')} {kind:16} {fields}".rstrip()


def _patched_text(r: dict[str, Any]) -> str:
    text = "changed; restarted: " + (", ".join(r["restarted"]) or "nothing")
    if r["restart_required"]:
        text += f"; applies after a restart: {', '.join(r['restart_required'])}"
    return text


def _status_text(r: dict[str, Any]) -> str:
    lines = [
        f"state {r['state']}{' (muted)' if r['muted'] else ''}, mode {r['mode']}, face {r['face']}, "
        f"brain {r['brain']['name']}, up {r['uptime']:.0f} s, version {r['version']}",
        f"audio in {r['audio']['input']} out {r['audio']['output']} volume {r['audio']['volume']}",
    ]
    for s in r["subsystems"]:
        extra = f" restarts={s['restarts']}" if s["restarts"] else ""
        extra += f" error={s['last_error']}" if s["last_error"] and s["status"] != "running" else ""
        lines.append(f"  {s['name']:14} {s['status']}{extra}")
    last = r.get("last_turn")
    if last:
        t = last["timings"]
        lines.append(f"last turn {last['outcome']}: first audio {t['first_audio']} s, finished {t['finished']} s")
    return "\n".join(lines)


def _histories_text(r: dict[str, Any]) -> str:
    if not r["histories"]:
        return "no conversations stored"
    return "\n".join(
        f"{h['id']}  {h['turns']:3} turn{'' if h['turns'] == 1 else 's'}{' (current)' if h['current'] else ''}  "
        f"{h['preview']}"
        for h in r["histories"]
    )


def _history_text(r: dict[str, Any]) -> str:
    lines = [f"conversation {r['id']}{' (current)' if r['current'] else ''}"]
    for t in r["turns"]:
        if t.get("heard"):
            lines.append(f"  user:  {t['heard']}")
        if t.get("spoken"):
            lines.append(f"  robot: {t['spoken']}  [{t['outcome']}]")
    return "\n".join(lines)
