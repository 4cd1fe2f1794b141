"""User hooks named in config as ``"package.module:function"``: plain or ``async`` functions.

Hooks run inline on the event loop, so a hook that blocks for long should be ``async`` (or hand its work to
``trio.to_thread.run_sync`` itself).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from appliance.audio.base import AudioClip


class HookError(ValueError):
    """A hook path in the config that cannot be loaded; the message names it."""


def load_hook(path: str, what: str = "hook") -> Callable[..., Any]:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise HookError(f"{what} {path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HookError(f"{what} {path!r}: cannot import {module_name!r}: {exc}") from None
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise HookError(f"{what} {path!r}: {module_name!r} has no {attribute!r}")
    if not callable(target):
        raise HookError(f"{what} {path!r} is not callable")
    return target


async def call_hook(hook: Callable[..., Any], *args: Any) -> Any:
    result = hook(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class HookedRecognizer:
    """Wraps a recognizer with an audio pre-process hook (clip → clip, e.g. noise reduction or a speaker
    gate that returns None to drop the utterance) and a text post-process hook (text → text)."""

    def __init__(
        self, inner: Any, preprocess: Callable[..., Any] | None = None, postprocess: Callable[..., Any] | None = None
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.preprocess, self.postprocess = preprocess, postprocess
        if hasattr(inner, "warm"):
            self.warm = inner.warm

    async def transcribe(self, audio: AudioClip, language: str | None = None) -> str:
        if self.preprocess is not None:
            processed = await call_hook(self.preprocess, audio)
            if processed is None:
                return ""  # the hook rejected the utterance (not the enrolled speaker, too noisy, ...)
            if not isinstance(processed, AudioClip):
                raise TypeError(f"STT preprocess hook returned {type(processed).__name__}, not an AudioClip or None")
            audio = processed
        text = await self.inner.transcribe(audio, language)
        if self.postprocess is not None and text:
            text = await call_hook(self.postprocess, text)
            if not isinstance(text, str):
                raise TypeError("STT postprocess hook must return a str")
        return text

    async def aclose(self) -> None:
        await self.inner.aclose()
