"""MCP servers as tool sources, over stdio (a command we start) or streamable HTTP (a URL).

The official ``mcp`` SDK is written on anyio, which runs on Trio's event loop: the session, its reader task
and the stdio subprocess all live inside this service's nursery, so shutdown closes them in order. Each
server's tools are added to the shared :class:`ToolRegistry` once listed and removed when the connection ends;
a server that fails is retried with backoff without disturbing the others.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from appliance.agent.tools import Tool, ToolError, ToolRegistry

log = logging.getLogger(__name__)


def result_text(result: Any) -> str:
    parts = []
    for item in getattr(result, "content", None) or ():
        text = getattr(item, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(item, 'type', 'content')}]")
    if not parts and getattr(result, "structured_content", None) is not None:
        import json

        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


class MCPServerConnection:
    """One MCP server: connects, lists its tools into the registry, and keeps the session open."""

    def __init__(
        self,
        name: str,
        registry: ToolRegistry,
        *,
        command: list[str] | None = None,
        url: str | None = None,
        env: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        prefix: str = "",
        timeout: float = 30.0,
        progress: str | None = None,
        allowed: list[str] | None = None,
    ) -> None:
        if bool(command) == bool(url):
            raise ValueError(f"MCP server {name!r}: give exactly one of command (stdio) or url (streamable HTTP)")
        self.name, self.registry = name, registry
        self.command, self.url, self.env, self.headers = command, url, env, headers
        self.prefix, self.timeout, self.progress = prefix, timeout, progress
        self.allowed = set(allowed or ())
        self.source = f"mcp:{name}"
        self.connected = trio.Event()

    def _client(self) -> Any:
        from mcp import Client
        from mcp.client.stdio import StdioServerParameters

        if self.command:
            target: Any = StdioServerParameters(command=self.command[0], args=self.command[1:], env=self.env)
        elif self.headers:
            import httpx2  # the SDK's own HTTP client; it carries our headers (auth) to the server
            from mcp.client.streamable_http import streamable_http_client

            assert self.url is not None
            target = streamable_http_client(self.url, http_client=httpx2.AsyncClient(headers=self.headers))
        else:
            target = self.url
        return Client(target, read_timeout_seconds=self.timeout)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self._client() as client:
            listing = await client.list_tools()
            for spec in listing.tools:
                if self.allowed and spec.name not in self.allowed:
                    continue
                self.registry.add(self._tool(client, spec))
            log.info("MCP server %s: %d tools", self.name, len(listing.tools), extra={"mcp": self.name})
            self.connected.set()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.registry.remove_source(self.source)
                self.connected = trio.Event()

    def _tool(self, client: Any, spec: Any) -> Tool:
        remote_name = spec.name

        async def runner(arguments: dict[str, Any]) -> str:
            result = await client.call_tool(remote_name, arguments)
            text = result_text(result)
            if getattr(result, "is_error", False):
                raise ToolError(text or f"{remote_name} failed")
            return text

        schema = dict(spec.input_schema or {"type": "object", "properties": {}})
        schema.setdefault("properties", {})
        return Tool(
            self.prefix + remote_name,
            spec.description or remote_name,
            schema,
            runner,
            None,
            self.progress,
            self.timeout,
            source=self.source,
        )


class MCPService:
    """Supervised service holding every configured MCP connection open, reconnecting with backoff."""

    name = "mcp"

    def __init__(self, connections: list[MCPServerConnection], max_backoff: float = 60.0) -> None:
        self.connections = connections
        self.max_backoff = max_backoff

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for connection in self.connections:
                nursery.start_soon(self._keep, connection)
            task_status.started()  # tools appear as their servers come up; a slow server never delays READY

    async def _keep(self, connection: MCPServerConnection) -> None:
        delay = 1.0
        while True:
            try:
                await connection.run()
            except Exception as exc:  # noqa: BLE001 - any failure of one server: log, back off, reconnect
                log.warning(
                    "MCP server %s failed: %s: %s; retrying in %g s",
                    connection.name,
                    type(exc).__name__,
                    exc,
                    delay,
                    extra={"mcp": connection.name},
                )
            await trio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
