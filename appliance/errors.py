"""The small exception tree every provider maps its failures into.

Failover and the conversation loop decide on these four, never on a library's own errors.
"""

from __future__ import annotations

import os
import re

# Keys a provider may echo back in its error text ("Incorrect API key provided: sk-..."). The ones we were
# configured with are remembered (``remember_secret``); the usual shapes and the environment's *_KEY / *_TOKEN
# values are caught even when nobody registered them.
_SECRETS: set[str] = set()
_KEY_SHAPES = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{8,}|AIza[0-9A-Za-z_\-]{20,}|xox[abp]-[A-Za-z0-9\-]{10,})"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"
)
_SECRET_ENV = re.compile(r"(?:KEY|TOKEN|SECRET|PASSWORD)$")
REDACTED = "[redacted]"


def remember_secret(value: str | None) -> None:
    """A configured secret, to be blotted out of every provider error from now on."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` without any known secret or anything shaped like an API key."""
    known = _SECRETS | {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6}
    for secret in sorted(known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _KEY_SHAPES.sub(REDACTED, text)


class ApplianceError(Exception):
    """Base of the appliance's own errors."""


class ProviderError(ApplianceError):
    """A speech, language or remote service failed. ``provider`` names it, for logs and status."""

    retryable = True

    def __init__(self, provider: str, message: str, *, retry_after: float | None = None) -> None:
        self.provider = provider
        self.message = message = redact(message)  # providers quote the request back, keys included
        self.retry_after = retry_after
        super().__init__(f"{provider}: {message}")


class ProviderUnavailable(ProviderError):
    """Could not reach it, or it answered 5xx / 429 (overloaded, rate limited)."""


class ProviderTimeout(ProviderError):
    """It did not answer in time."""


class ProviderRejected(ProviderError):
    """It refused the request: bad key, no permission, invalid request. Retrying will not help."""

    retryable = False


class ProviderBadReply(ProviderError):
    """It answered, but with something we cannot use: malformed, cut short, empty audio."""
