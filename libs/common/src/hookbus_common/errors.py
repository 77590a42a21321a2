"""The two error families every consumer maps to the bus: retry later, or never."""

from __future__ import annotations


class HookbusError(Exception):
    """Base of hookbus's own errors."""


class RetryableError(HookbusError):
    """Can succeed later (a dead downstream, a lost connection): nak with a delay."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(HookbusError):
    """Can never succeed as sent: terminate the message and record it as a dead letter."""
