"""Cut a streamed reply into speakable sentences as soon as each one is complete.

English terminators end a sentence only before whitespace (so "3.5" and "e.g." mid-word stay whole);
Japanese and Chinese terminators end it at once. A tag that is still open (``[face:jo``) is never cut.
"""

from __future__ import annotations

import re

_TERMINATOR = re.compile(r"([.!?…]+[\"')\]]*)(?=\s)|([。！？!?]+[」』）)]*)|(\n+)")
_MIN_CHARS = 8
# Words whose period does not end a sentence ("e.g. the shop", "Dr. Smith").
_ABBREVIATIONS = {"e.g.", "i.e.", "etc.", "vs.", "mr.", "mrs.", "ms.", "dr.", "st.", "no.", "approx.", "p.m.", "a.m."}  # "Hi." alone sounds clipped; short fragments are joined to the next sentence


class SentenceSplitter:
    def __init__(self, min_chars: int = _MIN_CHARS) -> None:
        self._buffer = ""
        self.min_chars = min_chars

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the sentences it completed."""
        self._buffer += text
        sentences: list[str] = []
        start = 0
        for m in _TERMINATOR.finditer(self._buffer):
            end = m.end()
            candidate = self._buffer[start:end].strip()
            if _open_tag(candidate) or _abbreviation(candidate):
                continue
            if len(candidate) < self.min_chars and not m.group(3):
                continue
            if candidate:
                sentences.append(candidate)
            start = end
        self._buffer = self._buffer[start:]
        return sentences

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []


def _open_tag(text: str) -> bool:
    return text.rfind("[") > text.rfind("]") or text.rfind("<") > text.rfind(">")


def _abbreviation(text: str) -> bool:
    last = text.rsplit(None, 1)[-1].lower() if text else ""
    return last in _ABBREVIATIONS or (len(last) == 2 and last[0].isalpha() and last[1] == ".")
