"""Built-in tool ``read_web_page``: the readable text of a URL, for the model to quote or summarise.

A robot sits on someone's home or school network, and the model's arguments come from whatever the user (or
a page the model read) said. So the reader only reaches public addresses unless told otherwise: every name
is resolved by us, every address checked, the connection made to the checked address (no second lookup a
DNS rebinding could answer differently), and every redirect hop checked the same way. Bodies are read up to
a byte limit and the text cut to a character limit.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import trio

from appliance.agent.tools import Tool, ToolError, one_text_tool

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}
_TEXT_TYPES = ("text/plain", "application/json", "text/markdown", "text/csv", "application/xml", "text/xml")
# Elements whose text is not the page's content.
_SKIPPED = {"script", "style", "noscript", "template", "svg", "head", "nav", "footer", "aside", "form", "iframe"}
_BLOCKS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "br",
    "li",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
    "table",
    "ul",
    "ol",
    "dd",
    "dt",
    "figcaption",
    "hr",
}


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses always; loopback, private, link-local and the like only when allowed."""

    allow_private: bool = False
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_config(cls, allow_private: bool, networks: Sequence[str]) -> AddressPolicy:
        return cls(allow_private, tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def allows(self, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback in disguise
        if self.allow_private or any(address in network for network in self.allow_networks):
            return True
        return address.is_global and not address.is_multicast


async def resolve(host: str, port: int) -> list[str]:
    try:
        found = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ToolError(f"cannot find the host {host!r}: {exc.strerror or exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in found))


@dataclass
class WebReader:
    policy: AddressPolicy = field(default_factory=AddressPolicy)
    max_bytes: int = 2_000_000
    max_chars: int = 8000
    timeout: float = 15.0
    resolver: Resolver = resolve
    user_agent: str = "appliance-web-reader/1"

    async def read(self, url: str) -> str:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, trust_env=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                request = await self._pinned_request(client, url)
                response = await client.send(request, stream=True)
                try:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if not response.is_success:
                        raise ToolError(f"the page answered HTTP {response.status_code}")
                    return await self._text(response)
                finally:
                    await response.aclose()
        raise ToolError(f"more than {MAX_REDIRECTS} redirects")

    async def _pinned_request(self, client: Any, url: str) -> Any:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ToolError(f"only http and https addresses can be read, not {url[:100]!r}")
        if parts.username or parts.password:
            raise ToolError("addresses with a user name or password are not read")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await self.resolver(host, port)]
        if not addresses:
            raise ToolError(f"cannot find the host {host!r}")
        refused = [a for a in addresses if not self.policy.allows(a)]
        if refused:
            log.warning("web reader refused %s: %s is not a public address", host, refused[0])
            raise ToolError(f"{host} is a private or local address; the reader only reaches public sites")
        chosen = addresses[0]
        literal = f"[{chosen}]" if chosen.version == 6 else str(chosen)
        netloc = f"{literal}:{port}" if parts.port else literal
        pinned = parts._replace(netloc=netloc).geturl()
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        headers = {
            "Host": parts.netloc,
            "User-Agent": self.user_agent,
            "Accept": "text/html, text/plain;q=0.9, */*;q=0.1",
            # The body is read raw up to max_bytes: a compressed one would be unreadable, and could inflate past it.
            "Accept-Encoding": "identity",
        }
        return client.build_request("GET", pinned, headers=headers, extensions=extensions)

    async def _text(self, response: Any) -> str:
        kind = response.headers.get("content-type", "text/html").split(";")[0].strip().lower()
        if kind not in ("text/html", "application/xhtml+xml") and kind not in _TEXT_TYPES:
            raise ToolError(f"the page is {kind}, not text")
        body, truncated = await read_limited(response, self.max_bytes)
        text = body.decode(response.charset_encoding or "utf-8", errors="replace")
        if kind in ("text/html", "application/xhtml+xml"):
            text = html_text(text)
        return shorten(text.strip(), self.max_chars, truncated)


class _Readable(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.skipping: list[str] = []
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in _SKIPPED:
            self.skipping.append(tag)
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self.skipping:  # also closes skipped elements left open inside it
            del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag) :]
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skipping:
            self.parts.append(data)


def html_text(html: str) -> str:
    """The words of a page, a line per block, without scripts, styles, navigation or markup."""
    parser = _Readable()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # HTMLParser on badly broken markup: keep what was read
        pass
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    body = "\n".join(line for line in lines if line)
    title = " ".join("".join(parser.title).split())
    return f"{title}\n\n{body}" if title else body


async def read_limited(response: Any, max_bytes: int) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of an httpx response's body, and whether there was more (left unread)."""
    body = bytearray()
    async for piece in response.aiter_raw():
        body += piece
        if len(body) > max_bytes:
            del body[max_bytes:]
            return bytes(body), True
    return bytes(body), False


def shorten(text: str, limit: int, truncated: bool = False, more: str = " … (the page goes on)") -> str:
    if len(text) <= limit and not truncated:
        return text
    cut = text[:limit]
    cut = re.sub(r"\s+\S*$", "", cut) or cut  # at a word boundary
    return cut + more


def web_reader_tool(
    reader: WebReader,
    *,
    name: str = "read_web_page",
    description: str = "",
    progress: str | None = None,
    timeout: float = 30.0,
) -> Tool:
    async def read(url: str) -> str:
        import httpx

        try:
            return await reader.read(url)
        except httpx.HTTPError as exc:
            raise ToolError(f"cannot read the page: {type(exc).__name__}: {exc}"[:300]) from None

    about = description or "Read a web page and return its text, to answer questions about that page."
    return one_text_tool(name, about, ("url", "the page's http(s) address"), read, progress=progress, timeout=timeout)
