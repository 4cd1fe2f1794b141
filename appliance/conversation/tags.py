"""Control tags in LLM replies: ``[face:joy]``, ``[animation:wave]``, ``<face name="joy" duration="3"/>``.

They drive faces and animations and are never spoken.
"""

from __future__ import annotations

import re

from appliance.turns import Tag

_BRACKET = re.compile(r"\[([a-z][a-z_]*):([^\[\]\s]+)\]")
_ELEMENT = re.compile(r"<([a-z][a-z_]*)((?:\s+[a-z_]+\s*=\s*\"[^\"]*\")*)\s*/>")
_ATTRIBUTE = re.compile(r"([a-z_]+)\s*=\s*\"([^\"]*)\"")
_SPACES = re.compile(r"\s+")
# Space left where a tag was removed before punctuation ("Hi [face:joy]!") would be spoken oddly.
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:。、！？])")


def extract_tags(text: str) -> tuple[str, tuple[Tag, ...]]:
    """Return the text without tags (whitespace tidied) and the tags in order of appearance."""
    found: list[tuple[int, Tag]] = []
    for m in _BRACKET.finditer(text):
        found.append((m.start(), Tag(m.group(1), m.group(2))))
    for m in _ELEMENT.finditer(text):
        attrs = tuple(_ATTRIBUTE.findall(m.group(2)))
        value = dict(attrs).get("name", "")
        rest = tuple((k, v) for k, v in attrs if k != "name")
        found.append((m.start(), Tag(m.group(1), value, rest)))
    clean = _ELEMENT.sub(" ", _BRACKET.sub(" ", text))
    clean = _SPACE_BEFORE_PUNCT.sub(r"\1", _SPACES.sub(" ", clean)).strip()
    return clean, tuple(tag for _, tag in sorted(found, key=lambda pair: pair[0]))
