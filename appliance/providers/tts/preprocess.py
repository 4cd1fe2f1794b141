"""Text preprocessing before speech: pattern replacement, and English words → katakana for Japanese voices
(which otherwise spell English letter by letter or skip it).

The katakana step looks words up in a dictionary first (a small built-in one plus the user's own), spells
short all-capital acronyms letter by letter, and may ask a language model for the rest (optional; results
are cached so each word costs one request once).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

from appliance.audio.base import AudioClip

log = logging.getLogger(__name__)


class ReplacementRule:
    def __init__(self, pattern: str, replacement: str, regex: bool = False, ignore_case: bool = False) -> None:
        flags = re.IGNORECASE if ignore_case else 0
        self.pattern = re.compile(pattern if regex else re.escape(pattern), flags)
        self.replacement = replacement if regex else replacement.replace("\\", "\\\\")

    def apply(self, text: str) -> str:
        return self.pattern.sub(self.replacement, text)


class PatternReplacer:
    name = "replace"

    def __init__(self, rules: Sequence[ReplacementRule]) -> None:
        self.rules = list(rules)

    async def process(self, text: str) -> str:
        for rule in self.rules:
            text = rule.apply(text)
        return text


LETTERS = {
    "A": "エー",
    "B": "ビー",
    "C": "シー",
    "D": "ディー",
    "E": "イー",
    "F": "エフ",
    "G": "ジー",
    "H": "エイチ",
    "I": "アイ",
    "J": "ジェー",
    "K": "ケー",
    "L": "エル",
    "M": "エム",
    "N": "エヌ",
    "O": "オー",
    "P": "ピー",
    "Q": "キュー",
    "R": "アール",
    "S": "エス",
    "T": "ティー",
    "U": "ユー",
    "V": "ブイ",
    "W": "ダブリュー",
    "X": "エックス",
    "Y": "ワイ",
    "Z": "ゼット",
}
BUILTIN_WORDS = {
    "hello": "ハロー",
    "robot": "ロボット",
    "ok": "オーケー",
    "okay": "オーケー",
    "thank": "サンク",
    "thanks": "サンクス",
    "you": "ユー",
    "yes": "イエス",
    "no": "ノー",
    "good": "グッド",
    "morning": "モーニング",
    "night": "ナイト",
    "coffee": "コーヒー",
    "computer": "コンピューター",
    "python": "パイソン",
    "raspberry": "ラズベリー",
    "pi": "パイ",
    "google": "グーグル",
    "openai": "オープンエーアイ",
    "chatgpt": "チャットジーピーティー",
    "wifi": "ワイファイ",
    "bluetooth": "ブルートゥース",
    "email": "イーメール",
    "internet": "インターネット",
    "music": "ミュージック",
    "weather": "ウェザー",
    "news": "ニュース",
    "timer": "タイマー",
    "alarm": "アラーム",
    "game": "ゲーム",
    "the": "ザ",
    "and": "アンド",
    "of": "オブ",
    "smart": "スマート",
    "phone": "フォン",
    "app": "アプリ",
    "appliance": "アプライアンス",
    "speaker": "スピーカー",
    "camera": "カメラ",
    "light": "ライト",
    "on": "オン",
    "off": "オフ",
    "home": "ホーム",
    "video": "ビデオ",
    "youtube": "ユーチューブ",
    "amazon": "アマゾン",
}
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*")


def load_dictionary(path: Path) -> dict[str, str]:
    """A JSON object ``{"word": "カタカナ"}`` or a TSV ``word<TAB>カタカナ`` file."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read katakana dictionary {path}: {exc.strerror}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"katakana dictionary {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"katakana dictionary {path} must map words to strings")
        return {k.lower(): v for k, v in data.items()}
    words = {}
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        word, sep, kana = line.partition("\t")
        if not sep or not kana.strip():
            raise ValueError(f"{path}:{number}: expected 'word<TAB>katakana'")
        words[word.strip().lower()] = kana.strip()
    return words


class KatakanaConverter:
    """English words → katakana. ``fallback`` is ``async (words) -> {word: kana}``, e.g. an LLM request."""

    name = "katakana"

    def __init__(
        self,
        dictionary: dict[str, str] | None = None,
        fallback: Callable[[list[str]], Awaitable[dict[str, str]]] | None = None,
    ) -> None:
        self.words = {**BUILTIN_WORDS, **{k.lower(): v for k, v in (dictionary or {}).items()}}
        self.fallback = fallback

    def _lookup(self, word: str) -> str | None:
        key = word.lower()
        if key in self.words:
            return self.words[key]
        if word.isupper() and len(word) <= 5 and word.isalpha():
            return "".join(LETTERS[c] for c in word)
        return None

    async def process(self, text: str) -> str:
        if not _WORD.search(text):
            return text
        unknown = sorted({w for w in _WORD.findall(text) if self._lookup(w) is None})
        if unknown and self.fallback is not None:
            try:
                learned = await self.fallback(unknown)
            except Exception as exc:  # noqa: BLE001 - the fallback is best effort; the sentence is still spoken
                log.warning("katakana fallback failed: %s", exc)
            else:
                self.words.update({k.lower(): v for k, v in learned.items() if isinstance(v, str) and v})
        return _WORD.sub(lambda m: self._lookup(m.group(0)) or m.group(0), text)


def llm_katakana(llm: Any) -> Callable[[list[str]], Awaitable[dict[str, str]]]:
    """A fallback that asks a language model for readings, as JSON."""
    from contextlib import aclosing

    from appliance.turns import Message

    async def ask(words: list[str]) -> dict[str, str]:
        system = (
            "Convert each English word to its usual Japanese katakana reading. Answer only with a JSON "
            "object mapping each word exactly as given to katakana."
        )
        text = ""
        async with aclosing(llm.stream(system, [Message("user", json.dumps(words))])) as stream:
            async for delta in stream:
                if isinstance(delta, str):
                    text += delta
        match = re.search(r"\{.*\}", text, re.DOTALL)
        return json.loads(match.group(0)) if match else {}

    return ask


class PreprocessingSynthesizer:
    """Runs text preprocessors, then the wrapped synthesizer (keeping its streaming and warm-up, if any)."""

    def __init__(self, inner: Any, preprocessors: Sequence[Any]) -> None:
        self.inner = inner
        self.name = inner.name
        self.preprocessors = list(preprocessors)
        if hasattr(inner, "synthesize_stream"):
            self.synthesize_stream = self._synthesize_stream
        if hasattr(inner, "warm"):
            self.warm = inner.warm

    async def _prepare(self, text: str) -> str:
        for p in self.preprocessors:
            text = await p.process(text)
        return text

    async def synthesize(self, text: str) -> AudioClip:
        return await self.inner.synthesize(await self._prepare(text))

    async def _synthesize_stream(self, text: str) -> AsyncIterator[AudioClip]:
        prepared = await self._prepare(text)
        async with aclosing(self.inner.synthesize_stream(prepared)) as pieces:
            async for piece in pieces:
                yield piece

    async def aclose(self) -> None:
        await self.inner.aclose()
