"""The first large write into an empty vector table: rows loaded first, HNSW graphs built after, all or
nothing (``recommender.vector_writes``)."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection, transaction

from recommender import selectors, vector_writes
from recommender.models import ModelVersion, ProductEmbedding
from recommender.vector_writes import embeddings_write, graphs_of_table

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

TABLE = ProductEmbedding._meta.db_table


def _graph_oids() -> dict[str, int]:
    """Name -> OID of every HNSW index of the vector table (a graph built again gets a new OID)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname, c.oid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am a ON a.oid = c.relam WHERE i.indrelid = %s::regclass AND a.amname = 'hnsw'",
            [TABLE],
        )
        return dict(cur.fetchall())


@pytest.fixture
def first_load(trained_catalog, settings):
    """The slice's vectors, a new version, and the vector table emptied (rolled back with the test)."""
    rows = list(ProductEmbedding.objects.filter(model_version=trained_catalog).order_by("product_id"))
    vecs = {
        c: np.stack([np.asarray(getattr(r, c)) for r in rows]) for c in ("image", "text", "fused", "compat")
    }
    ProductEmbedding.objects.all().delete()
    settings.HNSW_BUILD_AFTER_LOAD_MIN_ROWS = 50
    version = ModelVersion.objects.create(
        name="first", config=trained_catalog.config, status=ModelVersion.Status.READY
    )
    return version, [r.product_id for r in rows], vecs


def test_a_first_load_builds_every_graph_after_the_rows_and_they_serve(first_load):
    version, ids, vecs = first_load
    definitions, oids = graphs_of_table(TABLE), _graph_oids()
    assert len(definitions) >= 3 + 2 * 11  # image, text, fused + one fused and one compat graph per slot
    calls = []
    written = embeddings_write(
        version=version, product_ids=ids, progress=lambda done, n: calls.append((done, n)), **vecs
    )
    assert written == len(ids) == ProductEmbedding.objects.filter(model_version=version).count()
    assert graphs_of_table(TABLE) == definitions  # every graph back, as it was defined
    rebuilt = _graph_oids()
    assert sorted(rebuilt) == sorted(oids) and all(rebuilt[n] != oids[n] for n in oids)  # built anew
    assert calls == [(len(ids), len(ids))]
    # the new whole-table graph answers a similar-items ranking, with the exact answer on the slice
    query = vecs["fused"][7]
    sql = f"SELECT product_id FROM {TABLE} WHERE model_version_id = %s ORDER BY fused <#> %s::vector LIMIT 5"
    params = [version.pk, str(query.tolist())]
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(selectors.ranking_settings_sql("similar", 5))  # the selectors' own settings
        cur.execute("EXPLAIN " + sql, params)
        assert "Index Scan using emb_fused_hnsw" in "\n".join(r[0] for r in cur.fetchall())
        cur.execute(sql, params)
        got = [r[0] for r in cur.fetchall()]
    assert got == [ids[i] for i in np.argsort(-(vecs["fused"] @ query), kind="stable")[:5]]


def test_a_first_load_that_fails_leaves_no_row_and_every_graph(first_load, monkeypatch):
    version, ids, vecs = first_load
    definitions, oids = graphs_of_table(TABLE), _graph_oids()
    real = vector_writes._write_copy

    def write_then_fail(*args):
        real(*args)
        raise RuntimeError("worker lost mid-load")

    monkeypatch.setattr(vector_writes, "_write_copy", write_then_fail)
    with pytest.raises(RuntimeError, match="mid-load"):
        embeddings_write(version=version, product_ids=ids, **vecs)
    assert not ProductEmbedding.objects.exists()
    assert graphs_of_table(TABLE) == definitions and _graph_oids() == oids  # the same graphs, untouched


def test_a_write_into_a_table_with_rows_goes_through_the_graphs(first_load):
    version, ids, vecs = first_load
    head = {c: a[:1] for c, a in vecs.items()}
    embeddings_write(version=version, product_ids=ids[:1], **head)  # one row: under the threshold
    oids = _graph_oids()
    rest = {c: a[1:] for c, a in vecs.items()}
    assert embeddings_write(version=version, product_ids=ids[1:], **rest) == len(ids) - 1
    assert _graph_oids() == oids  # no graph dropped: a served table keeps its graphs
