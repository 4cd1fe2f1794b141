"""The small exception tree every provider maps its failures into.

Failover and the conversation loop decide on these four, never on a library's own errors.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of the appliance's own errors."""


class ProviderError(ApplianceError):
    """A speech, language or remote service failed. ``provider`` names it, for logs and status."""

    retryable = True

    def __init__(self, provider: str, message: str, *, retry_after: float | None = None) -> None:
        self.provider = provider
        self.message = message
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
