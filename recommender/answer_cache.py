"""Invalidation of the Redis cache of hot recommendation answers (``recommender.api.cached_answer``).

Answers are keyed by the active model version and by a **catalog generation**: a counter in the cache
that every change shoppers must see bumps once its transaction commits (a product's vectors written
for the active version, a product edited or deleted). Bumping retires every cached answer at once,
without scanning keys; the old entries expire on their own (``RECOMMENDATION_CACHE_SECONDS``). A cache
that is down is logged and skipped: answers are then computed, never a 500.
"""

from __future__ import annotations

import logging

from django.core.cache import cache
from django.db import transaction
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

#: What a cache that is down raises (redis-py's connection/timeout errors, socket errors).
CACHE_ERRORS = (RedisError, OSError)
GENERATION_KEY = "answers:generation"


def generation() -> int:
    """The current catalog generation (0 before the first change).

    Raises:
        RedisError, OSError: the cache is down (callers answer without the cache).
    """
    return int(cache.get(GENERATION_KEY) or 0)


def invalidate() -> None:
    """Retire every cached answer once the current transaction commits (at once outside one)."""

    def bump() -> None:
        try:
            try:
                cache.incr(GENERATION_KEY)
            except ValueError:  # no counter yet (first change, or the cache was flushed)
                cache.set(GENERATION_KEY, 1, None)
        except CACHE_ERRORS as exc:
            logger.warning("could not retire cached answers (%s); they expire on their own", exc)

    transaction.on_commit(bump)
