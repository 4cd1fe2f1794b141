"""Guardrails: hooks that may block or rewrite what the user asked before the model sees it, and what the
model answers before the robot says it.

A guardrail returns None (let it through) or a :class:`Verdict`. ``block`` on a request answers with the
verdict's text instead of asking the model; ``block`` on a reply sentence says the verdict's text instead and
ends the reply; ``rewrite`` replaces the text and carries on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from appliance.hooks import call_hook

Target = Literal["request", "reply"]


@dataclass(frozen=True)
class Verdict:
    action: Literal["block", "rewrite"]
    text: str


class Guardrail(Protocol):
    name: str
    target: Target

    async def check(self, text: str) -> Verdict | None: ...


class RegexGuardrail:
    """Blocks (answering ``message``) or rewrites (substituting ``replacement``) text matching ``pattern``."""

    def __init__(
        self,
        pattern: str,
        target: Target = "request",
        action: Literal["block", "rewrite"] = "block",
        message: str = "",
        replacement: str = "",
        name: str = "regex",
        ignore_case: bool = True,
    ) -> None:
        self.name, self.target, self.action = name, target, action
        self.pattern = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
        self.message, self.replacement = message, replacement
        if action == "block" and not message:
            raise ValueError(f"guardrail {name!r}: a blocking guardrail needs a message to say instead")

    async def check(self, text: str) -> Verdict | None:
        if not self.pattern.search(text):
            return None
        if self.action == "block":
            return Verdict("block", self.message)
        return Verdict("rewrite", self.pattern.sub(self.replacement, text))


class HookGuardrail:
    """A user function ``(text) -> None | str | Verdict``: a str rewrites, a Verdict says exactly what to do."""

    def __init__(self, hook: Callable[..., Any], target: Target, name: str = "hook") -> None:
        self.hook, self.target, self.name = hook, target, name

    async def check(self, text: str) -> Verdict | None:
        result = await call_hook(self.hook, text)
        if result is None or isinstance(result, Verdict):
            return result
        if isinstance(result, str):
            return None if result == text else Verdict("rewrite", result)
        raise TypeError(f"guardrail {self.name!r} returned {type(result).__name__}; expected None, str or Verdict")


async def apply(guardrails: Sequence[Any], target: Target, text: str) -> Verdict | None:
    """Run the guardrails for ``target`` in order; the first block wins, rewrites accumulate."""
    rewritten = text
    for g in guardrails:
        if g.target != target:
            continue
        verdict = await g.check(rewritten)
        if verdict is None:
            continue
        if verdict.action == "block":
            return verdict
        rewritten = verdict.text
    return Verdict("rewrite", rewritten) if rewritten != text else None
