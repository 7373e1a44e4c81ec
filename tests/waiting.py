"""Polling for the end-to-end tests: wait until a real worker, server or browser has done something."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.5) -> T:
    """Call ``predicate`` every ``every`` seconds until it returns something truthy, and return that.

    Raises:
        AssertionError: nothing truthy within ``timeout`` seconds (the message names ``what``).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
