"""The benchmarks' own databases: pointing the pooled default connection at another database."""

from __future__ import annotations

from django.db import connection

from recommender.bench_data import point_at


def _current() -> str:
    with connection.cursor() as cur:
        cur.execute("SELECT current_database()")
        return cur.fetchone()[0]


def test_point_at_reaches_the_other_database_through_the_connection_pool(django_db_setup, django_db_blocker):
    """The pool (``OPTIONS["pool"]``) keeps the database it opened with; renaming the setting alone left
    benchmarks truncating the development database. ``postgres`` exists on every server."""
    assert connection.settings_dict["OPTIONS"].get("pool"), "the tests run with the pool, as served"
    with django_db_blocker.unblock():
        home = _current()
        assert home.startswith("test_")
        try:
            point_at("postgres")
            assert _current() == "postgres"
        finally:
            point_at(home)
        assert _current() == home
