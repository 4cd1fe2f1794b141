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
