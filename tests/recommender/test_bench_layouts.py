"""``bench_layouts``' queries on the real slice: each layout's graph serves its query, and the re-ranked
layouts return the exact top 10 once their candidates cover the catalog."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection, transaction

from recommender.management.commands.bench_layouts import (
    K,
    _literal,
    layout_settings_sql,
    layout_sql,
    layouts,
)
from recommender.models import ProductEmbedding

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


def _exact_top(version, q: np.ndarray) -> list[int]:
    rows = ProductEmbedding.objects.filter(model_version=version).values_list("product_id", "fused")
    ids = np.asarray([pid for pid, _ in rows])
    x = np.stack([np.asarray(v, dtype=np.float32) for _, v in rows])
    return ids[np.argsort(-(x @ q))[:K]].tolist()


@pytest.mark.parametrize("name", ["vector", "halfvec", "binary+rerank", "prefix256+rerank"])
def test_each_layout_is_served_by_its_graph_and_reranking_is_exact(trained_catalog, name):
    version = trained_catalog
    spec = layouts(512, 256)[name]
    n = ProductEmbedding.objects.filter(model_version=version).count()
    emb = ProductEmbedding.objects.filter(model_version=version).order_by("product_id").first()
    q = np.asarray(emb.fused, dtype=np.float32)
    params = {"v": version.pk, "q": _literal(q), "p": _literal(q[:256] / np.linalg.norm(q[:256]))}
    with transaction.atomic(), connection.cursor() as cur:  # the indexes are rolled back with the test
        # at 160 rows the planner would read the version's rows by this B-tree and sort (the bench
        # database's 1M rows take the graph: bench_layouts checks its plans)
        cur.execute("DROP INDEX IF EXISTS emb_version_slot_audience")
        cur.execute(
            f"CREATE INDEX emb_layout_test_hnsw ON {ProductEmbedding._meta.db_table} USING hnsw "
            f"({spec['expr']} {spec['ops']})"
        )
        ef = min(n, 1000)
        cur.execute(layout_settings_sql(ef))
        sql = layout_sql(spec, ef)
        cur.execute("EXPLAIN " + sql, params)
        plan = "\n".join(r[0] for r in cur.fetchall())
        assert "emb_layout_test_hnsw" in plan, plan
        cur.execute(sql, params)
        got = [r[0] for r in cur.fetchall()]
    assert got[0] == emb.product_id  # its own vector first
    if spec["rerank"]:  # every row a candidate: the re-ranking alone orders them, exactly
        assert got == _exact_top(version, q)
    else:
        assert len(set(got) & set(_exact_top(version, q))) >= K - 1
