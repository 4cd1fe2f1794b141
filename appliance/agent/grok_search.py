"""Built-in tool ``grok_search``: xAI's Grok searches the web and/or X and answers with its sources.

It speaks xAI's Agent Tools API: ``POST {base_url}/responses`` with the server-side ``web_search`` and
``x_search`` tools, which xAI runs itself before it answers. (The older Live Search, ``search_parameters`` on
chat completions, is deprecated: xAI answers it with 410 Gone.) Any model the robot uses may call this tool;
the answer comes back to it as text with the source addresses, to be put in the robot's own words.

Everything the service sends is treated as hostile: the reply is read up to a byte limit within the tool's
time, and anything that is not the documented shape becomes a sentence for the model, never a crash.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.agent.tools import Tool, ToolError, one_text_tool
from appliance.agent.web_reader import read_limited, shorten

log = logging.getLogger(__name__)

DEFAULT_MODEL = "grok-4.3"
DEFAULT_BASE_URL = "https://api.x.ai/v1"
MAX_REPLY_BYTES = 2_000_000
MAX_SOURCES = 5
INSTRUCTIONS = (
    "Search to answer the query. Base the answer strictly on what the search found, say when it found nothing, "
    "and keep it short: it will be read out by a voice assistant."
)
_REASONS = {
    401: "refused the API key",
    403: "refused the API key",
    404: "does not know that model or address",
    410: "no longer offers this kind of search",
    429: "is busy or out of credit",
}


@dataclass(frozen=True)
class GrokSearch:
    """What is searched and how (``[[llm.tools]] builtin = "grok_search"``)."""

    api_key: str | None = field(repr=False)
    sources: Sequence[str] = ("web",)
    allowed_domains: Sequence[str] = ()
    excluded_domains: Sequence[str] = ()
    allowed_x_handles: Sequence[str] = ()
    excluded_x_handles: Sequence[str] = ()
    model: str = DEFAULT_MODEL
    base_url: str = DEFAULT_BASE_URL
    max_chars: int = 8000
    headers: dict[str, str] = field(default_factory=dict)

    def request_body(self, query: str) -> dict[str, Any]:
        tools: list[dict[str, Any]] = []
        if "web" in self.sources:
            web: dict[str, Any] = {"type": "web_search"}
            if self.allowed_domains:
                web["allowed_domains"] = list(self.allowed_domains)
            if self.excluded_domains:
                web["excluded_domains"] = list(self.excluded_domains)
            tools.append(web)
        if "x" in self.sources:
            x: dict[str, Any] = {"type": "x_search"}
            if self.allowed_x_handles:
                x["allowed_x_handles"] = [h.lstrip("@") for h in self.allowed_x_handles]
            if self.excluded_x_handles:
                x["excluded_x_handles"] = [h.lstrip("@") for h in self.excluded_x_handles]
            tools.append(x)
        return {
            "model": self.model,
            "input": [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": query}],
            "tools": tools,
            "store": False,  # nothing the user asked is kept on xAI's servers for later turns
            "stream": False,
        }

    async def search(self, query: str) -> str:
        import httpx

        url = f"{self.base_url.rstrip('/')}/responses"
        # identity: the byte limit then bounds what is held, with no compressed reply inflating past it
        headers = {**self.headers, "Accept-Encoding": "identity"}
        if self.api_key:  # without one, a gateway at base_url holds the key (or takes its own header)
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            async with (
                httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=None) as client,
                client.stream("POST", url, json=self.request_body(query), headers=headers) as response,
            ):
                if not response.is_success:
                    why = _REASONS.get(response.status_code, "failed")
                    raise ToolError(f"the search service {why} (HTTP {response.status_code})")
                body, truncated = await read_limited(response, MAX_REPLY_BYTES)
        except httpx.HTTPError as exc:
            raise ToolError(f"cannot reach the search service: {type(exc).__name__}") from None
        if truncated:
            raise ToolError("the search service sent a reply too large to read")
        try:
            reply = json.loads(body)
        except ValueError:
            raise ToolError("the search service answered something that is not JSON") from None
        return answer_from_reply(reply, self.max_chars)


def answer_from_reply(reply: Any, max_chars: int) -> str:
    """The answer text of a Responses API reply, cut to ``max_chars``, then its sources (``url_citation``
    annotations and xAI's ``citations`` list), at most five. Raises ToolError saying why there is none."""
    if not isinstance(reply, dict):
        raise ToolError("the search service answered something that is not a response")
    status = reply.get("status")
    if status == "failed" or reply.get("error"):
        error = reply.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        raise ToolError(f"the search failed{f' ({str(code)[:60]})' if code else ''}")
    texts: list[str] = []
    sources: list[Any] = []
    output = reply.get("output")
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict) or item.get("type") != "message":
            continue  # web_search_call / x_search_call items record what xAI searched; the answer is a message
        content = item.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                annotations = part.get("annotations")
                for note in annotations if isinstance(annotations, list) else ():
                    if isinstance(note, dict):
                        sources.append(note.get("url"))
    citations = reply.get("citations")
    sources += citations if isinstance(citations, list) else []
    text = "\n".join(t.strip() for t in texts if t.strip())
    if not text:
        incomplete = reply.get("incomplete_details")
        reason = incomplete.get("reason") if isinstance(incomplete, dict) else None
        raise ToolError(f"the search service sent no answer{f' ({str(reason)[:60]})' if reason else ''}")
    answer = shorten(text, max_chars, more=" … (cut)")
    links = _web_links(sources)
    return f"{answer}\n\nSources: {' '.join(links)}" if links else answer


def _web_links(candidates: list[Any]) -> list[str]:
    """Unique http(s) addresses, in order, each at most 300 characters; anything else is dropped."""
    links: list[str] = []
    for candidate in candidates:
        if not isinstance(candidate, str) or not candidate.startswith(("https://", "http://")):
            continue
        link = candidate.split()[0][:300] if candidate.split() else ""
        if link and link not in links:
            links.append(link)
    return links[:MAX_SOURCES]


def grok_search_tool(
    search: GrokSearch,
    *,
    name: str = "grok_search",
    description: str = "",
    progress: str | None = None,
    timeout: float = 30.0,
) -> Tool:
    async def ask(query: str) -> str:
        # The registry holds the whole call to ``timeout``, so a reply trickling in forever is cut off too.
        answer = await search.search(query[:1000])
        log.info("grok search answered (%d characters)", len(answer))
        return answer

    where = " and ".join({"web": "the web", "x": "posts on X"}[s] for s in search.sources)
    about = description or f"Search {where} with Grok for current facts and news; returns an answer with sources."
    query = ("query", "what to find out, as a full question")
    return one_text_tool(name, about, query, ask, progress=progress, timeout=timeout)
