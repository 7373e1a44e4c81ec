"""What the recommender does when the catalog announces a change (:data:`catalog.signals.products_changed`).

Connected in :meth:`recommender.apps.RecommenderConfig.ready`. The signal arrives after the catalog's
transaction committed, so the rows a task will read exist.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.dispatch import receiver

from catalog.signals import products_changed
from recommender import answer_cache
from recommender.models import ModelVersion
from recommender.services import embeddings_queue


@receiver(products_changed, dispatch_uid="recommender.receivers.products_changed")
def on_products_changed(
    sender, *, product_ids: Sequence[int], change: str, vectors_stale: bool, **kwargs
) -> None:
    """Queue the embedding of products whose photo, text or slot changed (for the active model version;
    nothing to do before a model exists: training embeds the whole catalog), and retire every cached
    answer unless the products are new (a new product has no vectors yet, so no answer shows it).
    """
    if vectors_stale and change != "deleted" and ModelVersion.objects.filter(is_active=True).exists():
        embeddings_queue(product_ids=product_ids)
    if change != "created":
        answer_cache.invalidate()
