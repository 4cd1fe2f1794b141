"""The command line's side of the control API: a small synchronous httpx client.

The URL and token come from the same configuration the appliance reads (``[control]``, the environment,
the token file), so ``appliance status`` works wherever ``appliance run`` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from appliance.auth import resolve_token
from appliance.settings.control import ControlConfig


class ApiError(Exception):
    """The API answered with an error, or could not be reached; the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotRunning(ApiError):
    pass


def default_url(config: ControlConfig) -> str:
    host = config.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


class ControlClient:
    def __init__(self, url: str, token: str | None, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @classmethod
    def from_config(
        cls,
        config: ControlConfig,
        url: str | None = None,
        token: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ControlClient:
        return cls(url or default_url(config), token or resolve_token(config, environ))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = {}  # the API takes only JSON bodies, an empty one included (it refuses cross-site forms)
        try:
            response = self.http.request(method, f"/v1{path}", json=body)
        except httpx.ConnectError as exc:
            raise NotRunning(f"no appliance answering at {self.url} ({exc})") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        return self._result(method, path, response)

    def _result(self, method: str, path: str, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise ApiError(f"{method} {path}: {response.status_code} {_detail(response)}", response.status_code)
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def running(self) -> bool:
        try:
            self.http.get("/v1/health", timeout=1.0)
        except httpx.HTTPError:
            return False
        return True

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[tuple[str, Any]]:
        """Server-Sent Events as ``(event, data)`` pairs."""
        try:
            with self.http.stream(method, f"/v1{path}", json=body, timeout=httpx.Timeout(10.0, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(f"{method} {path}: {response.status_code} {_detail(response)}", response.status_code)
                yield from parse_sse(response.iter_lines())
        except httpx.ConnectError as exc:
            raise NotRunning(f"no appliance answering at {self.url} ({exc})") from None


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    kind, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    yield kind, json.loads(text)
                except ValueError:
                    yield kind, text
            kind, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        return "; ".join(_one_problem(d) for d in detail)
    return str(detail)


def _one_problem(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    return f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}"


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``a.b=1 c=null d=text`` → ``{"a": {"b": 1}, "c": None, "d": "text"}`` (values read as JSON when they parse)."""
    patch: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r}: expected section.key=value")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        target = patch
        parts = key.strip().split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"{item!r}: {part} is set twice")
        target[parts[-1]] = value
    return patch
