"""Hearing what the services log, in-process."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def on_root_logger(handler: logging.Handler) -> Iterator[None]:
    """``handler`` hears every record, DEBUG and up, while inside; the root logger's
    level is put back after."""
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
