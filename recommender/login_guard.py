"""Password guessing: after ``LOGIN_MAX_FAILURES`` failed sign-ins for one user name from one client
address within ``LOGIN_LOCKOUT_S`` seconds, further attempts for that pair are refused until the
window has passed (the sign-in page and HTTP basic auth alike; the right password too, so a guesser
learns nothing). Failures are counted from Django's ``user_login_failed`` signal in the cache (Redis);
a successful sign-in clears the count. A cache that is down is logged and lets attempts through.
"""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.dispatch import receiver

from recommender.answer_cache import CACHE_ERRORS

logger = logging.getLogger(__name__)


def client_address(request) -> str:
    """The socket's address (``REMOTE_ADDR``); never a client-sent header (see ``NUM_PROXIES``)."""
    return (getattr(request, "META", None) or {}).get("REMOTE_ADDR", "") if request is not None else ""


def _key(address: str, username: str) -> str:
    digest = hashlib.sha256(f"{address}|{username.strip().lower()}".encode()).hexdigest()[:32]
    return f"login-failures:{digest}"


def locked_out(request, username: str) -> bool:
    """Whether sign-ins for ``username`` from this request's address are refused for now."""
    try:
        return int(cache.get(_key(client_address(request), username)) or 0) >= settings.LOGIN_MAX_FAILURES
    except CACHE_ERRORS as exc:
        logger.warning("login guard skipped, cache unavailable: %s", exc)
        return False


def lockout_message() -> str:
    minutes = max(1, round(settings.LOGIN_LOCKOUT_S / 60))
    return f"Too many failed sign-ins for this user name; try again in {minutes} minutes."


@receiver(user_login_failed)
def _count_failure(sender, credentials, request=None, **kwargs) -> None:
    key = _key(client_address(request), str(credentials.get("username", "")))
    try:
        if not cache.add(key, 1, settings.LOGIN_LOCKOUT_S):
            cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, settings.LOGIN_LOCKOUT_S)
    except CACHE_ERRORS as exc:
        logger.warning("login failure not counted, cache unavailable: %s", exc)


@receiver(user_logged_in)
def _clear_failures(sender, request, user, **kwargs) -> None:
    try:
        cache.delete(_key(client_address(request), user.get_username()))
    except CACHE_ERRORS as exc:
        logger.warning("login failures not cleared, cache unavailable: %s", exc)
