"""Secrets in configuration: where a provider's key comes from (environment, systemd credentials), which
keys are secret, and how they are blotted out of anything shown."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

SECRET_MARKERS = ("api_key", "token", "password", "secret", "authorization", "cookie", "credential", "encryption_key")
# Tables whose every value may be a credential (HTTP headers of tools, MCP servers and the http voice; the
# environment of an MCP server's process).
SECRET_TABLES = ("headers", "env")
# Query parameters that carry a credential in a URL.
_SECRET_QUERY = ("key", "sig", "signature", "code")
REDACTED = "**********"


PROVIDER_KEYS = {
    "openai": ("OPENAI_API_KEY", "openai_api_key"),
    "anthropic": ("ANTHROPIC_API_KEY", "anthropic_api_key"),
    "gemini": ("GEMINI_API_KEY", "gemini_api_key"),
    "google": ("GOOGLE_API_KEY", "google_api_key"),
    "azure": ("AZURE_SPEECH_KEY", "azure_speech_key"),
    "amivoice": ("AMIVOICE_API_KEY", "amivoice_api_key"),
    "dify": ("DIFY_API_KEY", "dify_api_key"),
    "xai": ("XAI_API_KEY", "xai_api_key"),  # the grok_search tool
}


def fill_secrets(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Give each cloud section without an explicit key the provider's usual one.

    Looked up in the provider's usual environment variable, then in systemd's credentials directory
    (``LoadCredential=openai_api_key:...``) so keys never have to be written into the TOML file.
    """
    for section in ("stt", "llm", "tts"):
        values = data.get(section)
        if values is None:
            values = {}
        if not isinstance(values, dict) or values.get("api_key"):
            continue
        provider = values.get("provider", "openai")
        names = PROVIDER_KEYS.get(provider) if isinstance(provider, str) else None
        if names is None:
            continue
        key = lookup_secret(names[0], names[1], environ)
        if key:
            values["api_key"] = key
            data[section] = values


def lookup_secret(env_name: str, credential: str, environ: Mapping[str, str]) -> str | None:
    if environ.get(env_name):
        return environ[env_name].strip()
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        file = Path(directory) / credential
        try:
            return file.read_text().strip() or None
        except OSError:
            return None
    return None


def is_secret_path(loc: tuple[str, ...]) -> bool:
    return any(is_secret_key(part) or part in SECRET_TABLES for part in loc)


def is_secret_key(key: str) -> bool:
    """A setting that holds a credential itself (``api_key``, ``access_token``...), not a path to one.

    Markers match whole words (``max_tokens`` is no token); ``token_file`` names a file, not a secret.
    """
    words = [word for word in re.split(r"[^a-z0-9]+", key.lower()) if word]
    if not words or words[-1] in ("file", "path", "dir"):
        return False
    joined = "_".join(words)
    return any(joined == m or joined.endswith("_" + m) or joined.startswith(m + "_") for m in SECRET_MARKERS)


def redact(value: Any, key: str | None = None) -> Any:
    """``value`` (JSON-able data) with every credential in it replaced by a marker, at any depth.

    A credential is a value under a secret-looking key, every value of a ``headers``/``env`` table, and the
    password or a key-like query parameter of any URL.
    """
    if isinstance(value, dict):
        if key in SECRET_TABLES:
            return {k: REDACTED for k in value}
        return {k: REDACTED if v is not None and is_secret_key(str(k)) else redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(item, key) for item in value]
    if isinstance(value, str) and "://" in value:
        return _redact_url(value)
    return value


def _redact_url(url: str) -> str:

    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    netloc = parts.netloc
    if password is not None:
        netloc = netloc.rsplit("@", 1)[0].split(":", 1)[0] + f":{REDACTED}@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        hidden = [(k, REDACTED if is_secret_key(k) or k.lower() in _SECRET_QUERY else v) for k, v in pairs]
        if hidden != pairs:
            query = urlencode(hidden, safe="{}*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_secret(value: SecretStr | None) -> bool:
    return value is not None and bool(value.get_secret_value())
