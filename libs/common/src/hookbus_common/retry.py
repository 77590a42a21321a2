"""Start-up retries: keep trying a connection while its server is still coming up."""

from __future__ import annotations

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential


def until_up(timeout: float, errors: tuple[type[BaseException], ...]) -> AsyncRetrying:
    """Retry on ``errors`` with exponential backoff (0.1 s up to 2 s) for ``timeout`` seconds,
    then raise the last error: services and servers may start in any order."""
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        reraise=True,
    )
