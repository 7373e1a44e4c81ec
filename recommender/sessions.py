"""Session engine: Django's database sessions, treating a session cookie with a NUL byte as no session.

Such a cookie reached the session lookup and PostgreSQL refused the query (a 500 on any page or API
call, found by the schemathesis fuzz); now the visitor is simply anonymous. ``SESSION_ENGINE`` points here.
"""

from __future__ import annotations

from django.contrib.sessions.backends import db


class SessionStore(db.SessionStore):
    """:class:`django.contrib.sessions.backends.db.SessionStore` that refuses keys PostgreSQL cannot hold."""

    def _validate_session_key(self, key: str | None) -> bool:
        return bool(super()._validate_session_key(key)) and "\x00" not in key
