"""Verdicts on replies: from a judge model (criteria in words) or a Python check (logic)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import trio

from appliance.errors import ProviderTimeout
from appliance.turns import Message

JUDGE_SYSTEM = (
    "You evaluate the replies of a voice character (a talking robot) in a scripted dialog. Tags in square "
    "brackets such as [face:joy] are stage directions for its face and are part of a correct reply. Answer "
    'with one JSON object and nothing else: {"pass": true or false, "reason": "one short sentence"}.'
)
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
MAX_REASON = 500


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    by: str  # "judge", "check", or "error"

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reason": self.reason, "by": self.by}


def parse_verdict(text: str) -> Verdict:
    """The judge's JSON verdict; anything else is a failure that shows what the judge said instead."""
    match = _OBJECT.search(text)
    data: Any = None
    if match:
        try:
            data = json.loads(match.group(0))
        except ValueError:
            data = None
    verdict = data.get("pass", data.get("passed")) if isinstance(data, dict) else None
    if not isinstance(verdict, bool):
        shown = " ".join(text.split())[:200] or "(nothing)"
        return Verdict(False, f"the judge gave no verdict: {shown}", "error")
    reason = data.get("reason")
    return Verdict(verdict, str(reason)[:MAX_REASON] if reason else ("passed" if verdict else "failed"), "judge")


def transcript(turns: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"User: {said}\nRobot: {reply}" for said, reply in turns)


async def ask_judge(llm: Any, prompt: str, timeout: float) -> Verdict:
    """One verdict from the judge model; a judge that fails or stalls is an error verdict, not a pass."""
    from appliance.errors import ProviderError

    pieces: list[str] = []
    try:
        with trio.fail_after(timeout):
            async with aclosing(llm.stream(JUDGE_SYSTEM, (Message("user", prompt),))) as events:
                async for event in events:
                    if isinstance(event, str):
                        pieces.append(event)
    except trio.TooSlowError:
        return Verdict(False, f"the judge did not answer within {timeout:g} s", "error")
    except ProviderTimeout as exc:
        return Verdict(False, f"the judge timed out: {exc}", "error")
    except ProviderError as exc:
        return Verdict(False, f"the judge failed: {exc}", "error")
    return parse_verdict("".join(pieces))


def turn_prompt(history: Sequence[tuple[str, str]], said: str, reply: str, criteria: str) -> str:
    earlier = transcript(history) or "(none)"
    return (
        f"Earlier in the dialog:\n{earlier}\n\nThe user now said: {said}\nThe robot replied: {reply}\n\n"
        f"Does the robot's reply meet this criterion? {criteria}"
    )


def goal_prompt(turns: Sequence[tuple[str, str]], goal: str) -> str:
    return f"The whole dialog:\n{transcript(turns)}\n\nDid the dialog reach this goal? {goal}"


async def run_check(check: Callable[..., Any], name: str, *args: Any) -> Verdict:
    """A Python check returns a bool, or (bool, reason); raising is a failure that names the error."""
    from appliance.hooks import call_hook

    try:
        result = await call_hook(check, *args)
    except Exception as exc:  # noqa: BLE001 - user code: its failure is this check's verdict
        return Verdict(False, f"{name} raised {type(exc).__name__}: {exc}"[:MAX_REASON], "check")
    reason = ""
    if isinstance(result, tuple) and len(result) == 2:
        result, reason = result
    if not isinstance(result, bool):
        return Verdict(False, f"{name} returned {type(result).__name__}, not a bool or (bool, reason)", "check")
    return Verdict(result, str(reason)[:MAX_REASON] or f"{name} {'passed' if result else 'failed'}", "check")
