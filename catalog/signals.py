"""How the catalog tells the layers above it that products changed, without importing them.

The catalog sits at the bottom of the project (``recommender`` imports ``catalog``, never the other
way round). A service that creates, edits or deletes products calls :func:`products_changed_on_commit`;
once the transaction commits, :data:`products_changed` is sent, and whoever listens (the recommender
app queues embeddings and retires cached answers: ``recommender/receivers.py``) reacts. A change that
is rolled back is never announced.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from django.db import transaction
from django.dispatch import Signal

from catalog.models import Product

logger = logging.getLogger(__name__)

#: Sent once a transaction that created, changed or deleted products has committed, with keyword
#: arguments ``product_ids`` (``list[int]``), ``change`` (``"created"``, ``"updated"`` or
#: ``"deleted"``) and ``vectors_stale`` (``bool``: what the products embed, their photo, text or slot,
#: changed, so their vectors must be computed again). ``sender`` is :class:`catalog.models.Product`.
products_changed = Signal()

Change = Literal["created", "updated", "deleted"]


def products_changed_on_commit(*, product_ids: Sequence[int], change: Change, vectors_stale: bool) -> None:
    """Send :data:`products_changed` for these products once the current transaction commits (at once
    outside one). Nothing is sent for an empty id list.

    Receivers run through ``send_robust``: one that raises is logged and never fails the write that
    already committed (its work is repaired later, e.g. by the recommender's reconciliation).
    """

    ids = [int(i) for i in product_ids]
    if not ids:
        return

    def send() -> None:
        for receiver, result in products_changed.send_robust(
            sender=Product, product_ids=ids, change=change, vectors_stale=vectors_stale
        ):
            if isinstance(result, Exception):
                logger.error("receiver %r of products_changed failed: %s", receiver, result, exc_info=result)

    transaction.on_commit(send)
