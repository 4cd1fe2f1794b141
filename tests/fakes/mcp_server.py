"""A tiny MCP server for the tests, run over stdio: ``python tests/fakes/mcp_server.py``."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

app = MCPServer("tiny-test-server")


@app.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@app.tool()
def explode(reason: str = "because") -> str:
    """A tool that always fails."""
    raise RuntimeError(f"exploded {reason}")


if __name__ == "__main__":
    app.run("stdio")


async def serve_http(*, task_status: object = None) -> None:
    """Serve the same tools over streamable HTTP on 127.0.0.1 (an ephemeral port) with hypercorn/trio."""
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    asgi = app.streamable_http_app(host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, asgi, config)
        task_status.started(binds[0] + "/mcp")  # type: ignore[attr-defined]
