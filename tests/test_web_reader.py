"""The built-in ``read_web_page`` tool: readable text from a real HTTP server on 127.0.0.1, and the address
policy that keeps a model's URL off the robot's own and its home network (hostile URLs, redirects, sizes)."""

from __future__ import annotations

import gzip
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from appliance.agent.tools import ToolError
from appliance.agent.web_reader import AddressPolicy, WebReader, html_text, shorten
from appliance.events import SentenceStarted, TurnFinished
from tests.fakes.providers import fake_providers
from tests.harness import cloud_config, running_appliance, serve_routes
from tests.test_providers_agent import ASK

PAGE = """<!doctype html><html><head><title>Robot  news</title><style>body{color:red}</style>
<script>var secret = "do not read";</script></head><body><nav>Home | About</nav>
<article><h1>Pandas</h1><p>Pandas eat   bamboo &amp; sleep.</p><p>They live in China.</p></article>
<footer>Copyright</footer></body></html>"""
HOSTS: list[str] = []


@asynccontextmanager
async def web_server() -> AsyncIterator[str]:
    async def page(request: Request) -> Response:
        HOSTS.append(request.headers.get("host", ""))
        return Response(PAGE, media_type="text/html; charset=utf-8")

    async def private_hop(request: Request) -> Response:
        port = request.url.port
        return RedirectResponse(f"http://127.0.0.2:{port}/page", status_code=302)

    async def relative_hop(request: Request) -> Response:
        return RedirectResponse("/page", status_code=301)

    async def loop(request: Request) -> Response:
        return RedirectResponse("/loop", status_code=307)

    async def big(request: Request) -> Response:
        async def endless() -> AsyncIterator[bytes]:
            for _ in range(10_000):  # 100 MB if read whole
                yield b"word " * 2000

        return StreamingResponse(endless(), media_type="text/plain")

    async def gzip_if_asked(request: Request) -> Response:  # as most real sites do
        if "gzip" in request.headers.get("accept-encoding", ""):
            compressed = gzip.compress(b"squeezed words")
            return Response(compressed, media_type="text/plain", headers={"Content-Encoding": "gzip"})
        return Response(b"plain words", media_type="text/plain")

    routes = [
        Route("/page", page),
        Route("/gzip-if-asked", gzip_if_asked),
        Route("/private-hop", private_hop),
        Route("/relative-hop", relative_hop),
        Route("/loop", loop),
        Route("/big", big),
        Route("/image", lambda r: Response(b"\x89PNG....", media_type="image/png")),
        Route("/missing", lambda r: PlainTextResponse("gone", status_code=404)),
        Route("/latin1", lambda r: Response("caf\xe9".encode("latin-1"), media_type="text/plain; charset=latin-1")),
    ]
    async with serve_routes(routes) as url:
        yield url


def local_reader(**options: Any) -> WebReader:
    """A reader for which this test server's 127.0.0.1 is 'public', and nothing else local is."""
    return WebReader(AddressPolicy.from_config(False, ["127.0.0.1/32"]), **options)


async def test_a_page_is_read_as_its_words_without_scripts_styles_or_navigation() -> None:
    async with web_server() as url:
        text = await local_reader().read(f"{url}/page")
    assert text == "Robot news\n\nPandas\nPandas eat bamboo & sleep.\nThey live in China."
    assert HOSTS[-1] == url.removeprefix("http://")  # the Host header names the host, not the pinned address


async def test_relative_redirects_are_followed_and_charsets_honoured() -> None:
    async with web_server() as url:
        assert (await local_reader().read(f"{url}/relative-hop")).startswith("Robot news")
        assert await local_reader().read(f"{url}/latin1") == "café"
        # the body is read raw up to max_bytes, so it is asked for uncompressed (not gzip bytes as text)
        assert await local_reader().read(f"{url}/gzip-if-asked") == "plain words"


async def test_a_redirect_to_a_private_address_is_refused() -> None:
    async with web_server() as url:
        with pytest.raises(ToolError, match="127.0.0.2 is a private or local address"):
            await local_reader().read(f"{url}/private-hop")


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1/",
        "http://localhost/",
        "http://[::1]/",
        "http://10.1.2.3/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[fe80::1]/",
        "http://224.0.0.1/",
    ],
)
async def test_local_and_private_addresses_are_refused_by_default(target: str) -> None:
    async def never(host: str, port: int) -> list[str]:
        raise AssertionError("literal addresses and localhost are judged without a look-up")

    reader = WebReader()
    if "localhost" in target:
        from appliance.agent.web_reader import resolve

        reader.resolver = resolve
    else:
        reader.resolver = lambda host, port: _literal(host)
    with pytest.raises(ToolError, match="private or local address"):
        await reader.read(target)


async def _literal(host: str) -> list[str]:
    return [str(ipaddress.ip_address(host))]


async def test_a_name_with_one_private_address_among_public_ones_is_refused() -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "127.0.0.1"]

    with pytest.raises(ToolError, match="private or local"):
        await WebReader(resolver=rebinding).read("http://example.test/")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http:///nohost", "only http and https"),
    ],
)
async def test_other_schemes_and_credentials_are_refused(target: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        await WebReader().read(target)


async def test_sizes_loops_types_and_errors_end_in_a_reason_for_the_model() -> None:
    async with web_server() as url:
        big = await local_reader(max_bytes=50_000, max_chars=1000).read(f"{url}/big")
        assert big.endswith("… (the page goes on)") and len(big) < 1100
        with pytest.raises(ToolError, match="more than 5 redirects"):
            await local_reader().read(f"{url}/loop")
        with pytest.raises(ToolError, match="image/png, not text"):
            await local_reader().read(f"{url}/image")
        with pytest.raises(ToolError, match="HTTP 404"):
            await local_reader().read(f"{url}/missing")


async def test_unknown_hosts_are_a_reason_not_a_crash() -> None:
    with pytest.raises(ToolError, match="cannot find the host"):
        await WebReader().read("http://no-such-host.invalid/")


def test_text_extraction_survives_broken_markup_and_shortens_at_a_word() -> None:
    assert html_text("<p>one<nav>skip<p>two</nav>three</p><div>four") == "one\nthree\nfour"
    assert html_text("<title>T</title><<<>>>&bogus;<p>x").startswith("T")
    assert shorten("alpha beta gamma", 12) == "alpha beta … (the page goes on)"


async def test_the_model_reads_a_page_through_the_config_tool_in_a_turn() -> None:
    async with web_server() as site:
        reply = "Here is what I found: {result}"
        async with fake_providers(tool_call=("read_web_page", {"url": f"{site}/page"}), tool_reply=reply) as fake:
            tools = [{"builtin": "read_web_page", "allow_networks": ["127.0.0.1/32"], "progress": "Let me look."}]
            config = cloud_config(fake.url, llm__tools=tools)
            async with running_appliance(config) as (app, log):
                await app.conversation.start_turn(ASK)
                done = await log.wait_for(TurnFinished)
                spoken = [e.text for e in log.of(SentenceStarted)]
    assert done.outcome == "done"
    offered = fake.bodies("/v1/chat/completions")[0]["tools"][0]["function"]
    assert offered["name"] == "read_web_page" and offered["parameters"]["required"] == ["url"]
    tool_message = fake.bodies("/v1/chat/completions")[1]["messages"][-1]
    assert tool_message["role"] == "tool" and "Pandas eat bamboo & sleep." in tool_message["content"]
    assert any("Pandas eat bamboo" in text for text in spoken)


async def test_by_default_the_model_cannot_make_the_robot_read_its_own_network() -> None:
    async with web_server() as site:
        reply = "Result: {result}"
        async with fake_providers(tool_call=("read_web_page", {"url": f"{site}/page"}), tool_reply=reply) as fake:
            config = cloud_config(fake.url, llm__tools=[{"builtin": "read_web_page"}])
            async with running_appliance(config) as (app, log):
                await app.conversation.start_turn(ASK)
                await log.wait_for(TurnFinished)
    tool_message = fake.bodies("/v1/chat/completions")[1]["messages"][-1]
    assert "private or local address" in tool_message["content"] and "Pandas" not in tool_message["content"]


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        ({"builtin": "read_web_page", "function": "x:y"}, "exactly one of"),
        ({"builtin": "shell"}, "builtin"),
        ({"builtin": "read_web_page", "allow_networks": ["home"]}, "'home' is not a network"),
        ({"builtin": "read_web_page", "max_bytes": 10}, "max_bytes"),
    ],
)
def test_bad_builtin_tool_settings_are_config_errors(tool: dict[str, Any], message: str) -> None:
    from appliance.config import AppConfig

    with pytest.raises(ValueError, match=message):
        AppConfig.model_validate({"llm": {"tools": [tool]}})
