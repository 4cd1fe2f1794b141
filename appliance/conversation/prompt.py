"""The system prompt with its ``{placeholders}`` filled in (``conversation.system_prompt_params``)."""

from __future__ import annotations


class _Prompt(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"  # an unknown {placeholder} stays as written rather than failing the turn


def render_prompt(template: str, params: dict[str, str]) -> str:
    return template.format_map(_Prompt(params))
