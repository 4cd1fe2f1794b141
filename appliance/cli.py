"""Command line: ``appliance run | check-config | devices | say`` and the control API's client commands.

``main`` parses arguments and hands a configuration to the supervisor; policy lives in the subsystems.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from appliance import __version__
from appliance.groups import leaves

log = logging.getLogger("appliance")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="Firmware for talking robots.")
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    _global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the appliance (the default)")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    check = sub.add_parser("check-config", help="validate the configuration and print what it selects")
    check.add_argument("--show", action="store_true", help="print the whole configuration (secrets redacted)")
    init = sub.add_parser("init", help="write a starter configuration file for this user (or --config FILE)")
    init.add_argument("--force", action="store_true", help="replace an existing file (the old one is kept as .prev)")
    sub.add_parser("devices", help="list audio devices")
    serve = sub.add_parser("serve", help="serve the cloud brain over the AIAvatarKit WebSocket protocol ([server])")
    serve.add_argument("--host", help="address to listen on (default: server.host)")
    serve.add_argument("--port", type=int, help="port (default: server.port)")
    serve.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    evaluate = sub.add_parser("eval", help="run dialog scenarios through the brain and judge the replies")
    evaluate.add_argument("scenarios", type=Path, help="a .toml, .json or .yaml file of scenarios")
    evaluate.add_argument("--results", type=Path, help="where results are kept (default: SCENARIOS.results.json)")
    evaluate.add_argument("--rerun", action="store_true", help="run scenarios again that already have results")
    evaluate.add_argument("--only", action="append", metavar="NAME", help="run only this scenario (repeatable)")
    faces = sub.add_parser("faces", help="draw every face at the display's size into a folder of PNGs")
    faces.add_argument("folder", type=Path)
    say = sub.add_parser(
        "say", help="speak a line: through the running appliance (its API), else locally with the configured voice"
    )
    say.add_argument("text")
    say.add_argument("--output", type=Path, help="write a WAV file instead of playing (implies --local)")
    where = say.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="speak here, without the running appliance")
    where.add_argument("--api", action="store_true", help="only through the running appliance; fail if none")
    say.add_argument("--interrupt", action="store_true", help="stop the current turn instead of queueing")
    say.add_argument("--face", help="face to show while saying it")
    say.add_argument("--animation")
    from appliance.control.cli import add_commands

    add_commands(sub)
    for command in sub.choices.values():  # the global options work after the verb too
        _global_options(command, top=False)
    return parser


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--config --url --token --json``, before or after the verb.

    After the verb they default to "not given" (SUPPRESS) so that they do not overwrite a value given
    before it.
    """
    unset = None if top else argparse.SUPPRESS
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=unset,
        help="TOML file (default: $APPLIANCE_CONFIG, else the user's, else /etc/appliance/appliance.toml)",
    )
    parser.add_argument("--url", default=unset, help="control API address (default: from [control])")
    parser.add_argument("--token", default=unset, help="bearer token (default: control.token / token_file / env)")
    parser.add_argument(
        "--json", action="store_true", default=False if top else argparse.SUPPRESS, help="print JSON instead of text"
    )


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``appliance status | head -1``): nothing left to say, and no traceback.
        # Python would try to flush stdout once more at exit and complain; point it at /dev/null.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    return code


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    from appliance.config import load_config
    from appliance.settings_base import ConfigError

    if command == "init":
        return _init(args.config, args.force)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_CONFIG
    if command == "check-config":
        return _check_config(config, args.show)
    if command == "eval":
        from appliance.evaluation.command import run_eval
        from appliance.logs import setup_logging

        setup_logging("WARNING")
        return run_eval(config, args.scenarios, sys.stdout, results=args.results, rerun=args.rerun, only=args.only)
    if command == "faces":
        return _faces(config, args.folder)
    if command == "devices":
        return _devices()
    if command == "serve":
        return _serve(config, args.host, args.port, args.log_level)
    if command == "say":
        if not (args.local or args.output):
            from appliance.control.cli import say_through_api

            result = say_through_api(config, args)
            if result is not None:
                return result
        return _say(config, args.text, args.output)
    if command != "run":
        from appliance.control.cli import run_command

        return run_command(command, config, args)
    return _run(config, getattr(args, "log_level", None), args.config)


def _init(explicit: Path | None, force: bool) -> int:
    import os

    from appliance.config import config_path, user_config_path, write_starter_config

    path = explicit or user_config_path(os.environ)
    try:
        written = write_starter_config(path, force=force)
    except FileExistsError:
        print(f"{path} exists already; edit it, or `appliance init --force` to start again", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {written}")
    used = config_path(explicit, os.environ)
    if used != written:
        print(f"note: {used} is read before it (see `appliance check-config`)", file=sys.stderr)
    return EXIT_OK


def _run(config, level: str | None, path: Path | None = None) -> int:
    import os

    import trio

    from appliance.app import build_appliance
    from appliance.config import editable_config_path
    from appliance.logs import setup_logging
    from appliance.settings_base import ConfigError
    from appliance.supervisor import SupervisorGaveUp

    want_status = config.log.status_line == "on" or (config.log.status_line == "auto" and sys.stdout.isatty())
    handler = setup_logging(level or config.log.level, status_line=want_status)
    try:
        appliance = build_appliance(
            config, status_handler=handler, control=True, config_path=editable_config_path(path, os.environ)
        )
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_CONFIG
    try:
        trio.run(appliance.run)
    except BaseExceptionGroup as group:
        gave_up, rest = group.split(SupervisorGaveUp)
        if rest is not None:
            raise
        log.critical("%s", leaves(gave_up)[0] if gave_up else group)
        return EXIT_FAILED
    except SupervisorGaveUp as exc:
        log.critical("%s", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass
    finally:
        if handler is not None:
            sys.stdout.write("\n")
    log.info("stopped (%s)", appliance.supervisor.stop_reason or "done")
    return EXIT_OK


def _serve(config, host: str | None, port: int | None, level: str | None) -> int:
    from appliance.server.serving import serve_command

    return serve_command(config, host, port, level)


def _check_config(config, show: bool) -> int:
    from appliance.assembly.brains import brain_plan, build_response_hooks, build_tracing, cloud_brain_factory
    from appliance.bus import EventBus
    from appliance.conversation.local_voice import LocalVoice
    from appliance.settings_base import ConfigError

    plan = brain_plan(config)
    brain = ",".join(plan)
    try:
        if "cloud" in plan:
            cloud_brain_factory(config, LocalVoice())
        build_response_hooks(EventBus(), config)
        tracing = build_tracing(config)
        if tracing is not None:
            tracing.shutdown()
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return EXIT_CONFIG
    from appliance.auth import ControlSetupError, check_bind, resolve_token

    try:
        check_bind(config.control, resolve_token(config.control))
    except ControlSetupError as exc:
        print(f"configuration error:\n  - {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if show:
        print(json.dumps(config.redacted(), indent=2))
    print(
        f"configuration OK: brain={brain} stt={config.stt.provider} llm={config.llm.provider}:{config.llm.model_name} "
        f"tts={config.tts.provider} "
        f"input={config.audio.input} output={config.audio.output} listening={config.listening.mode}"
    )
    from appliance.settings.hardware import describe

    print(f"body: {describe(config.hardware)}")
    print(f"echo: {describe_echo(config.listening)}")
    return EXIT_OK


def describe_echo(listening) -> str:
    """Which echo handling runs, as check-config prints it."""
    from appliance.audio.echo_engines import resolve_backend

    backend = resolve_backend(listening.echo_cancel)
    guard = listening.self_trigger_guard
    if backend == "off":
        why = "off" if listening.echo_cancel == "off" else "auto: no livekit/pywebrtc-audio wheel here"
        return f"no echo canceller ({why}); self-trigger guard {guard}, margin {listening.barge_in_margin_db:g} dB"
    if guard == "gate":
        return "no echo canceller (self_trigger_guard = gate ignores the mic while the robot speaks)"
    ns = " + noise suppression" if listening.noise_suppression else ""
    return (
        f"webrtc AEC3{ns} (echo_cancel = {listening.echo_cancel}"
        f"{': with a sound-card microphone, backs off when it cannot stay aligned' if listening.echo_cancel == 'auto' else ''}"
        f"); self-trigger guard {guard}, "
        f"margin {min(listening.barge_in_margin_db, listening.echo_cancel_margin_db):g} dB"
    )


def _faces(config, folder: Path) -> int:
    from appliance.hardware.face_art import FaceImageError
    from appliance.hardware.preview import write_face_previews

    try:
        written = write_face_previews(config.hardware.display, folder)
    except (FaceImageError, OSError) as exc:
        print(f"cannot draw the faces: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{len(written)} pictures in {folder}")
    return EXIT_OK


def _devices() -> int:
    from appliance.audio.device import AudioDeviceError, list_devices

    try:
        devices = list_devices()
    except AudioDeviceError as exc:
        print(f"no audio devices: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not devices:
        print("no audio devices found")
        return EXIT_OK
    print("  #  in/out  default   mono int16 rates (kHz)             name  [host API]")
    for d in devices:
        kinds = "/".join(k for k, n in (("in", d.inputs), ("out", d.outputs)) if n)
        rates = []
        if d.input_rates:
            rates.append("in " + ",".join(f"{r / 1000:g}" for r in d.input_rates))
        if d.output_rates:
            rates.append("out " + ",".join(f"{r / 1000:g}" for r in d.output_rates))
        shown = "; ".join(rates) or "-"
        print(f"{d.index:3}  {kinds:6}  {d.default_rate:>5.0f} Hz  {shown:34} {d.name}  [{d.hostapi}]")
    print("use audio.input_device / audio.output_device = index or a part of the name")
    return EXIT_OK


def _say(config, text: str, output: Path | None) -> int:
    from typing import Any

    import trio

    from appliance.assembly.devices import make_sink
    from appliance.audio.convert import write_wav
    from appliance.conversation.local_voice import LocalVoice
    from appliance.conversation.tags import extract_tags
    from appliance.errors import ProviderError
    from appliance.logs import setup_logging

    setup_logging(config.log.level)
    voice_text, tags = extract_tags(text)
    if not voice_text:
        print("nothing to say", file=sys.stderr)
        return EXIT_FAILED

    async def speak() -> None:
        from appliance.providers import factory

        tts: Any = LocalVoice()
        if factory.tts_ready(config.tts):
            default, voices = factory.build_tts(config.tts, tts)
            language = next((t.value.lower() for t in tags if t.name == "lang"), None)  # "[lang:ja] ..." picks a voice
            tts = voices.get(language or "", default)
        clip = await tts.synthesize(voice_text)
        if output is not None:
            write_wav(output, clip)
            return
        sink = make_sink(config)
        heard.append(getattr(sink, "name", "") != "simulated")
        async with sink.open():
            await sink.play(clip)

    heard: list[bool] = []
    try:
        trio.run(speak)
    except ProviderError as exc:
        print(f"cannot speak: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if heard and not heard[0]:
        # A simulated speaker plays into nothing: say so, and fail unless simulation was asked for.
        asked = config.audio.output == "simulated"
        why = "audio.output is simulated" if asked else "no sound card found"
        print(f"{why}: nothing was heard (--output x.wav writes the speech to a file)", file=sys.stderr)
        return EXIT_OK if asked else EXIT_FAILED
    return EXIT_OK
