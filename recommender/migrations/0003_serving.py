"""Half-precision HNSW expression indexes for serving, created when ``PGVECTOR_HALFVEC`` is true.

``(fused::halfvec(E)) halfvec_ip_ops`` and ``(compat::halfvec(C)) halfvec_ip_ops`` (pgvector ≥ 0.7):
half the index memory of the full-precision indexes; the selectors cast the same way when the setting
is on (``recommender.selectors.distance_expression``). With the setting off at migrate time nothing
is created (the indexes would only slow every upsert); set it and run ``migrate recommender 0001`` then
``migrate`` to add them later. ``bench_serving`` measures their size, recall and latency.
"""

from django.conf import settings
from django.db import migrations

INDEXES = {
    "emb_fused_half_hnsw": ("fused", lambda: settings.EMBEDDING_DIM),
    "emb_compat_half_hnsw": ("compat", lambda: settings.COMPAT_DIM),
}


def create(apps, schema_editor):
    if not settings.PGVECTOR_HALFVEC:
        return
    for name, (column, dim) in INDEXES.items():
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON recommender_productembedding USING hnsw "
            f"(({column}::halfvec({dim()})) halfvec_ip_ops) WITH (m = 16, ef_construction = 64)"
        )


def drop(apps, schema_editor):
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("recommender", "0002_pipeline")]

    operations = [migrations.RunPython(create, drop)]
