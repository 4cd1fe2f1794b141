"""Build the agent's parts from configuration: the tools the model may call (config-declared, built-in, MCP),
guardrails, and the camera for vision."""

from __future__ import annotations

from typing import Any

from appliance.providers.factory import key_for
from appliance.settings.conversation import LLMConfig, ToolConfig


def build_tools(cfg: LLMConfig, registry: Any = None, show_picture: Any = None) -> Any:
    """A registry holding the config-declared tools (MCP tools join it when their servers connect).

    ``show_picture(png_or_jpeg, seconds, caption)`` puts a picture on the display (generate_image).
    """
    from appliance.agent.tools import ToolRegistry

    registry = registry if registry is not None else ToolRegistry()
    registry.remove_source("config")  # a rebuilt brain takes the config's tools as they are now
    for index, t in enumerate(cfg.tools):
        where = f"llm.tools[{index}]"
        if t.function:
            declared = _function_tool(t, where)
        elif t.builtin == "generate_image":
            declared = _image_tool(t, show_picture)
        elif t.builtin == "grok_search":
            declared = _grok_search_tool(t, where)
        elif t.builtin:
            declared = _web_reader_tool(t)
        else:
            declared = _http_tool(t)
        registry.add(declared)
    return registry


def _function_tool(t: ToolConfig, where: str) -> Any:
    import pydantic

    from appliance.agent.tools import tool
    from appliance.hooks import load_hook

    func = load_hook(t.function or "", f"{where}.function")
    try:
        declared = tool(func, name=t.name, description=t.description or None, progress=t.progress, timeout=t.timeout)
    except (TypeError, ValueError, pydantic.PydanticUserError) as exc:  # a signature no schema can describe
        raise ValueError(f"{where}.function {t.function!r}: {exc}") from None
    declared.source = "config"
    return declared


def _image_tool(t: ToolConfig, show_picture: Any) -> Any:
    from appliance.agent.image_tool import image_tool
    from appliance.agent.tools import ToolError

    def nowhere(picture: bytes, seconds: float, caption: str) -> None:
        raise ToolError("this robot has no display to show a picture on")

    return image_tool(
        show_picture or nowhere,
        key_for("gemini", None),
        model=t.model,
        base_url=t.base_url,
        seconds=t.show_seconds,
        name=t.name or t.builtin or "generate_image",
        description=t.description,
        progress=t.progress,
        timeout=t.timeout,
    )


def _grok_search_tool(t: ToolConfig, where: str) -> Any:
    from appliance.agent.grok_search import DEFAULT_BASE_URL, DEFAULT_MODEL, GrokSearch, grok_search_tool

    key = key_for("xai", None)
    if key is None and not t.base_url:  # a gateway at base_url may hold the key itself
        raise ValueError(f"{where}: grok_search needs an xAI API key (set XAI_API_KEY, or a credential xai_api_key)")
    search = GrokSearch(
        key,
        sources=tuple(dict.fromkeys(t.sources)),
        allowed_domains=tuple(t.allowed_domains),
        excluded_domains=tuple(t.excluded_domains),
        allowed_x_handles=tuple(t.allowed_x_handles),
        excluded_x_handles=tuple(t.excluded_x_handles),
        model=t.model or DEFAULT_MODEL,
        base_url=t.base_url or DEFAULT_BASE_URL,
        max_chars=t.max_chars,
        headers=dict(t.headers),
    )
    return grok_search_tool(
        search, name=t.name or "grok_search", description=t.description, progress=t.progress, timeout=t.timeout
    )


def _web_reader_tool(t: ToolConfig) -> Any:
    from appliance.agent.web_reader import AddressPolicy, WebReader, web_reader_tool

    policy = AddressPolicy.from_config(t.allow_private, t.allow_networks)
    reader = WebReader(policy, t.max_bytes, t.max_chars, timeout=t.timeout)
    return web_reader_tool(
        reader,
        name=t.name or t.builtin or "read_web_page",
        description=t.description,
        progress=t.progress,
        timeout=t.timeout,
    )


def _http_tool(t: ToolConfig) -> Any:
    from appliance.agent.tools import http_tool

    assert t.url is not None and t.name is not None
    declared = http_tool(  # its parameters schema was checked by ToolConfig
        t.name,
        t.description or t.name,
        t.url,
        t.parameters,
        headers=t.headers,
        progress=t.progress,
        timeout=t.timeout,
    )
    declared.source = "config"
    return declared


def build_guardrails(cfg: LLMConfig) -> list[Any]:
    from appliance.agent.guardrails import HookGuardrail, RegexGuardrail
    from appliance.hooks import load_hook

    rails: list[Any] = []
    for index, g in enumerate(cfg.guardrails):
        name = f"llm.guardrails[{index}]"
        if g.pattern:
            rails.append(RegexGuardrail(g.pattern, g.target, g.action, g.message, g.replacement, name=name))
        else:
            assert g.hook is not None
            rails.append(HookGuardrail(load_hook(g.hook, f"{name}.hook"), g.target, name=name))
    return rails


def build_mcp(cfg: LLMConfig, registry: Any) -> Any:
    """The MCP service for the configured servers, or None."""
    if not cfg.mcp_servers:
        return None
    from appliance.agent.mcp_tools import MCPServerConnection, MCPService

    connections = [
        MCPServerConnection(
            s.name,
            registry,
            command=s.command,
            url=s.url,
            env=s.env or None,
            headers=s.headers or None,
            prefix=s.prefix,
            timeout=s.timeout,
            progress=s.progress,
            allowed=s.tools,
        )
        for s in cfg.mcp_servers
    ]
    return MCPService(connections)


def build_camera(cfg: LLMConfig) -> Any:
    if cfg.camera == "off":
        return None
    from appliance.agent.vision import make_camera

    return make_camera(cfg.camera, cfg.camera_image, cfg.camera_device)


def check_parts(llm: LLMConfig) -> list[str]:
    """The tools and guardrails build without network (functions import, schemas describe them)."""
    from appliance.hooks import HookError

    try:
        build_tools(llm)
        build_guardrails(llm)
    except (HookError, ValueError, TypeError) as exc:
        return [str(exc)]
    return []
