"""Tools the language model can call: declared in Python (``@tool``), in config (a Python function or an HTTP
endpoint), or discovered at runtime from MCP servers.

Arguments are validated by pydantic against the function's signature before the function runs; a bad
argument, a failing tool or a tool that runs out of time comes back to the model as an error result (so it
can apologise or try again) instead of failing the turn. A slow tool may have a ``progress`` sentence the
robot says while it waits.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import pydantic
import trio

from appliance.providers.llm.base import Image, ToolCall, ToolResult, ToolSpec

log = logging.getLogger(__name__)

Runner = Callable[[dict[str, Any]], Awaitable[Any]]


class ToolError(Exception):
    """Raised by a tool to tell the model, in words, why it could not do what was asked."""


@dataclass(eq=False)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    runner: Runner
    model: type[pydantic.BaseModel] | None = None  # validates arguments before ``runner`` sees them
    progress: str | None = None
    timeout: float = 30.0
    source: str = "python"

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    async def call(self, arguments: dict[str, Any]) -> Any:
        if self.model is not None:
            validated = self.model.model_validate(arguments)
            arguments = {key: getattr(validated, key) for key in type(validated).model_fields}
        return await self.runner(arguments)


def _arguments_model(func: Callable[..., Any], name: str) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    for param in inspect.signature(func).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name!r}: *args/**kwargs cannot be described to a model")
        annotation = param.annotation if param.annotation is not inspect.Parameter.empty else Any
        default = param.default if param.default is not inspect.Parameter.empty else ...
        fields[param.name] = (annotation, default)
    return pydantic.create_model(f"{name}_arguments", **fields)


def _parameters_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema.setdefault("properties", {})
    return schema


def tool(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    progress: str | None = None,
    timeout: float = 30.0,
) -> Any:
    """Make a :class:`Tool` from a plain or async function; its docstring is the description.

    ``@tool`` or ``@tool(progress="Let me check the weather.", timeout=10)``.
    """

    def build(f: Callable[..., Any]) -> Tool:
        tool_name = name or f.__name__
        model = _arguments_model(f, tool_name)

        async def runner(arguments: dict[str, Any]) -> Any:
            result = f(**arguments)
            if inspect.isawaitable(result):
                result = await result
            return result

        doc = description or inspect.getdoc(f) or tool_name.replace("_", " ")
        return Tool(tool_name, doc, _parameters_schema(model), runner, model, progress, timeout)

    return build(func) if func is not None else build


def http_tool(
    name: str,
    description: str,
    url: str,
    parameters: dict[str, Any] | None = None,
    *,
    headers: dict[str, str] | None = None,
    progress: str | None = None,
    timeout: float = 30.0,
) -> Tool:
    """A tool that POSTs its arguments as JSON to ``url`` and gives the model the reply body."""
    import httpx

    async def runner(arguments: dict[str, Any]) -> Any:
        async with httpx.AsyncClient(timeout=timeout) as client:
            try:
                response = await client.post(url, json=arguments, headers=headers or {})
            except httpx.HTTPError as exc:
                raise ToolError(f"{type(exc).__name__}: {exc}") from None
        if not response.is_success:
            raise ToolError(f"HTTP {response.status_code}: {response.text[:200]}")
        return response.text

    schema = parameters or {"type": "object", "properties": {}}
    if schema.get("type") != "object":
        raise ValueError(f"tool {name!r}: parameters must be a JSON schema of type 'object'")
    return Tool(name, description, schema, runner, None, progress, timeout, source="http")


def one_text_tool(
    name: str,
    description: str,
    argument: tuple[str, str],
    run: Callable[[str], Awaitable[Any]],
    *,
    progress: str | None = None,
    timeout: float = 30.0,
) -> Tool:
    """A config tool taking one required text ``argument`` = (its name, what it is); ``run`` gets it stripped."""
    key, about = argument

    async def runner(arguments: dict[str, Any]) -> Any:
        value = arguments.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ToolError(f"the {key!r} argument ({about}) is missing or empty")
        return await run(value.strip())

    schema = {"type": "object", "properties": {key: {"type": "string", "description": about}}, "required": [key]}
    return Tool(name, description, schema, runner, None, progress, timeout, source="config")


def render_result(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump_json()
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


# Who is told of the tool calls of a turn (the HTTP API's ``tool_call`` frames): set by whoever asks a brain
# for a reply, around that reply, so each request hears of its own calls only (the tasks of a turn inherit it).
ToolWatcher = Callable[[ToolCall, ToolResult | None], Awaitable[None]]
tool_watcher: ContextVar[ToolWatcher | None] = ContextVar("tool_watcher", default=None)


async def _tell(watcher: ToolWatcher, call: ToolCall, result: ToolResult | None) -> None:
    try:
        await watcher(call, result)
    except Exception:  # a watcher (a client that left) must never fail the tool or the turn
        log.debug("tool watcher failed", exc_info=True)


@dataclass
class ToolRegistry:
    """The tools offered to the model. Tools may be added and removed while the appliance runs (MCP servers
    come and go); each turn sees the set as it was when the turn asked."""

    _tools: dict[str, Tool] = field(default_factory=dict)

    def add(self, *tools: Tool | Callable[..., Any]) -> None:
        for item in tools:
            t = item if isinstance(item, Tool) else tool(item)
            if t.name in self._tools and self._tools[t.name].source != t.source:
                log.warning("tool %s from %s replaces the one from %s", t.name, t.source, self._tools[t.name].source)
            self._tools[t.name] = t

    def remove(self, name: str) -> None:
        self._tools.pop(name, None)

    def remove_source(self, source: str) -> None:
        for name in [n for n, t in self._tools.items() if t.source == source]:
            del self._tools[name]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for t in self._tools.values())

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def __bool__(self) -> bool:
        return True  # an empty registry is still a registry (tools may arrive later)

    async def run(self, call: ToolCall) -> ToolResult:
        """Run one call; every failure becomes an error result the model can read. The turn's tool watcher, if
        any, hears of the call before it runs and of its result after."""
        watcher = tool_watcher.get()
        if watcher is not None:
            await _tell(watcher, call, None)
        result = await self._run(call)
        if watcher is not None:
            await _tell(watcher, call, result)
        return result

    async def _run(self, call: ToolCall) -> ToolResult:
        t = self._tools.get(call.name)
        if t is None:
            return ToolResult(call, f"There is no tool named {call.name!r}.", is_error=True)
        try:
            with trio.fail_after(t.timeout):
                value = await t.call(call.arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            log.info("tool %s got invalid arguments: %s", call.name, problems)
            return ToolResult(call, f"Invalid arguments: {problems}", is_error=True)
        except trio.TooSlowError:
            log.warning("tool %s timed out after %g s", call.name, t.timeout)
            return ToolResult(call, f"The tool did not finish within {t.timeout:g} seconds.", is_error=True)
        except ToolError as exc:
            return ToolResult(call, str(exc), is_error=True)
        except Exception as exc:  # a tool's bug must not end the conversation; the log keeps the traceback
            log.warning("tool %s failed", call.name, exc_info=True)
            return ToolResult(call, f"The tool failed: {type(exc).__name__}: {exc}"[:300], is_error=True)
        if isinstance(value, Image):
            return ToolResult(call, "The picture is attached to this message.", images=(value,))
        return ToolResult(call, render_result(value))
