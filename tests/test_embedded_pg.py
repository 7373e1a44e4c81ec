"""The embedded server's memory setting (``recommender.db.shared_buffers_tune``), on a private cluster:
PostgreSQL's default 128 MB holds less than a 100k catalog's vectors and graphs."""

from __future__ import annotations

import pytest

from recommender.db import shared_buffers_default, shared_buffers_tune
from tests.private_pg import PrivatePostgres

pytestmark = [pytest.mark.slow]


def test_default_is_a_quarter_of_the_memory_within_bounds():
    assert shared_buffers_default(total_bytes=16 * 2**30) == "4096MB"
    assert shared_buffers_default(total_bytes=8 * 2**30) == "2048MB"
    assert shared_buffers_default(total_bytes=64 * 2**30) == "4096MB"  # at most 4 GB
    assert shared_buffers_default(total_bytes=256 * 2**20) == "128MB"  # never below PostgreSQL's own


def test_tune_restarts_the_server_once_with_the_setting():
    pg = PrivatePostgres("tune")
    try:
        before = pg.server.get_pid()
        assert pg.query("SHOW shared_buffers") == [("128MB",)]
        assert shared_buffers_tune(pg.server, pg.pgdata, "160MB") is True
        assert pg.query("SHOW shared_buffers") == [("160MB",)]  # the running server has it, not only the file
        assert pg.server.get_pid() != before  # the new postmaster (a test session stops only its own)
        assert shared_buffers_tune(pg.server, pg.pgdata, "160MB") is False  # already set: no restart
        for bad in ("lots", "2G'; DROP", "512"):  # no unit: PostgreSQL would read 8 kB blocks
            with pytest.raises(ValueError, match="size with a unit"):
                shared_buffers_tune(pg.server, pg.pgdata, bad)
        assert pg.query("SHOW shared_buffers") == [("160MB",)]  # the server still serves
    finally:
        pg.close()
