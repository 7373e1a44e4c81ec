"""API authentication: DRF's HTTP Basic and Token schemes, refusing credentials PostgreSQL cannot hold.

A NUL byte (``\\x00``) in a Basic-auth user name (it arrives base64-encoded, so any byte can) or in a
token reached the user/token lookup and PostgreSQL refused the query: a 500 found by the schemathesis
fuzz (tests/test_fuzz.py). Such credentials are simply wrong: they answer 401 like any other.
"""

from __future__ import annotations

import drf_spectacular.authentication
from rest_framework import authentication, exceptions

from recommender import login_guard


class BasicAuthentication(authentication.BasicAuthentication):
    """``Authorization: Basic <base64 user:password>``; a user name with a NUL byte is a failed login (401)."""

    def authenticate_credentials(self, userid, password, request=None):
        if "\x00" in userid:
            raise exceptions.AuthenticationFailed("Invalid username/password.")
        if login_guard.locked_out(request, userid):  # password guessing (recommender.login_guard)
            raise exceptions.AuthenticationFailed(login_guard.lockout_message())
        return super().authenticate_credentials(userid, password, request)


class TokenAuthentication(authentication.TokenAuthentication):
    """``Authorization: Token <key>`` (keys from ``manage.py drf_create_token <user>``); a key with a NUL
    byte is an invalid token (401)."""

    def authenticate_credentials(self, key):
        if "\x00" in key:
            raise exceptions.AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(key)


class BasicScheme(drf_spectacular.authentication.BasicScheme):
    """The OpenAPI description of :class:`BasicAuthentication` (drf-spectacular matches classes by name)."""

    target_class = "recommender.authentication.BasicAuthentication"
