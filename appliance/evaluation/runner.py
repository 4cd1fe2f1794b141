"""Run scenarios through the robot's cloud brain as text and judge them; keep results between runs."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from appliance.audio.base import AudioClip
from appliance.errors import ProviderError
from appliance.evaluation.judge import Verdict, ask_judge, goal_prompt, run_check, turn_prompt
from appliance.evaluation.scenarios import JudgeSpec, ScenarioError, ScenarioFile, ScenarioSpec
from appliance.groups import single_error
from appliance.turns import Message, ReplyChunk, TurnRequest, Utterance

log = logging.getLogger(__name__)

RESULTS_VERSION = 1


class WordsOnly:
    """Speech in and out for a brain that is evaluated on its words: nothing is heard, nothing is synthesized."""

    name = "words-only"

    async def transcribe(self, audio: AudioClip, language: str | None = None) -> str:
        raise ProviderError(self.name, "dialog evaluation sends text, never audio")

    async def synthesize(self, text: str) -> AudioClip:
        return AudioClip(np.zeros(0, dtype=np.int16), 16000)

    async def aclose(self) -> None:
        return None


@dataclass
class TurnOutcome:
    said: str
    reply: str
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(verdict.passed for verdict in self.verdicts)


@dataclass
class ScenarioOutcome:
    name: str
    digest: str
    turns: list[TurnOutcome] = field(default_factory=list)
    goal: list[Verdict] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and all(t.passed for t in self.turns) and all(v.passed for v in self.goal)

    def as_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "passed": self.passed,
            "error": self.error,
            "turns": [
                {"input": t.said, "reply": t.reply, "verdicts": [v.as_dict() for v in t.verdicts]} for t in self.turns
            ],
            "goal": [v.as_dict() for v in self.goal],
        }


class Checks:
    """Loads the scenario file's Python checks, with the file's folder importable (checks.py beside it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder.resolve())
        self._loaded: dict[str, Callable[..., Any]] = {}

    def problems(self, scenarios: ScenarioFile) -> list[str]:
        paths = [(f"{s.name}: goal_check", s.goal_check) for s in scenarios.scenario]
        paths += [(f"{s.name}: turn {n} check", t.check) for s in scenarios.scenario for n, t in enumerate(s.turns, 1)]
        found = []
        for where, path in paths:
            if path:
                try:
                    self.get(path)
                except ValueError as exc:
                    found.append(f"{where}: {exc}")
        return found

    def get(self, path: str) -> Callable[..., Any]:
        from appliance.hooks import load_hook

        if path not in self._loaded:
            if self.folder not in sys.path:
                sys.path.insert(0, self.folder)
            self._loaded[path] = load_hook(path, "check")
        return self._loaded[path]


class ResultStore:
    """Results by scenario name in one JSON file, rewritten atomically after every scenario."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[str, Any] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ScenarioError(f"{path}: cannot read earlier results ({exc}); delete it or pass --rerun") from None
            if not isinstance(data, dict) or data.get("version") != RESULTS_VERSION:
                raise ScenarioError(f"{path}: not a results file of this version; delete it or pass --rerun")
            self.results = dict(data.get("scenarios") or {})

    def done(self, spec: ScenarioSpec, digest: str) -> dict[str, Any] | None:
        earlier = self.results.get(spec.name)
        return earlier if isinstance(earlier, dict) and earlier.get("digest") == digest else None

    def save(self, outcome: ScenarioOutcome) -> None:
        self.results[outcome.name] = outcome.as_dict()
        text = json.dumps({"version": RESULTS_VERSION, "scenarios": self.results}, indent=2, ensure_ascii=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class Evaluator:
    def __init__(self, brain: Any, judge: Any, judge_spec: JudgeSpec, checks: Checks, context: str) -> None:
        self.brain = brain
        self.judge = judge  # None when no scenario has words for a judge
        self.judge_spec = judge_spec
        self.checks = checks
        self.context = context

    async def run(self, spec: ScenarioSpec) -> ScenarioOutcome:
        outcome = ScenarioOutcome(spec.name, spec.digest(self.context))
        history: list[Message] = []
        said_and_replied: list[tuple[str, str]] = []
        for number, turn in enumerate(spec.turns, 1):
            try:
                reply = await self._reply(spec.name, number, turn.input, history)
            except ProviderError as exc:
                outcome.error = f"turn {number}: the brain failed: {exc}"
                return outcome
            result = TurnOutcome(turn.input, reply)
            if turn.criteria:
                prompt = turn_prompt(said_and_replied, turn.input, reply, turn.criteria)
                result.verdicts.append(await ask_judge(self.judge, prompt, self.judge_spec.timeout))
            if turn.check:
                result.verdicts.append(await run_check(self.checks.get(turn.check), turn.check, reply, turn.input))
            outcome.turns.append(result)
            history += [Message("user", turn.input), Message("assistant", reply)]
            said_and_replied.append((turn.input, reply))
        if spec.goal:
            prompt = goal_prompt(said_and_replied, spec.goal)
            outcome.goal.append(await ask_judge(self.judge, prompt, self.judge_spec.timeout))
        if spec.goal_check:
            check = self.checks.get(spec.goal_check)
            outcome.goal.append(await run_check(check, spec.goal_check, list(said_and_replied)))
        return outcome

    async def _reply(self, scenario: str, number: int, text: str, history: list[Message]) -> str:
        request = TurnRequest(f"eval-{number}", Utterance(text=text, source="eval"), tuple(history), f"eval:{scenario}")
        send, receive = trio.open_memory_channel[Any](0)
        parts: list[str] = []
        with single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.brain.reply, request, send)
                async with receive:
                    async for item in receive:
                        if isinstance(item, ReplyChunk) and item.text:
                            parts.append(item.text.strip())
        return " ".join(part for part in parts if part)
