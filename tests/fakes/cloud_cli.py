"""The command line both fake OpenAI clouds take (``tests.fakes.cloud`` and the bench's ``bench.lean_cloud``): the
bench starts either with the same flags. Only argparse here, so the lean one imports no web framework."""

from __future__ import annotations

import argparse


def fake_cloud_arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stt-latency", type=float, default=0.0)
    parser.add_argument("--llm-latency", type=float, default=0.0)
    parser.add_argument("--tts-latency", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--tts-piece-delay", type=float, default=0.0, help="seconds between 100 ms pieces of speech")
    parser.add_argument("--reuse-port", action="store_true", help="share the port with other fakes (SO_REUSEPORT)")
    return parser
