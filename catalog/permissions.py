"""Who may change the catalog: shoppers read anonymously; every write needs the merchandiser permission.

``MERCHANDISER_PERM`` guards the merchandiser pages (:func:`merchandiser_required`) and the API's writes
(:class:`ReadOnlyOrMerchandiser`, the default permission in ``REST_FRAMEWORK``; :class:`IsMerchandiser`
for endpoints merchandisers alone may read).
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.decorators import login_required, permission_required
from rest_framework.permissions import SAFE_METHODS, BasePermission

MERCHANDISER_PERM = "catalog.add_product"


def merchandiser_required(view: Callable) -> Callable:
    """A page for merchandisers: anonymous visitors go to the sign-in page, other users get a 403."""
    return login_required(permission_required(MERCHANDISER_PERM, raise_exception=True)(view))


class ReadOnlyOrMerchandiser(BasePermission):
    """Safe methods for everyone; anything else for authenticated users with ``catalog.add_product``."""

    message = "this action needs a logged-in merchandiser"

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS or getattr(view, "public_post", False):
            return True
        if not hasattr(view, request.method.lower()):
            return True  # the view answers 405 Method Not Allowed, not a misleading 403
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(MERCHANDISER_PERM))


class IsMerchandiser(BasePermission):
    """Logged-in users with the merchandiser permission, for every method (reads too)."""

    message = "this needs a logged-in merchandiser"

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.has_perm(MERCHANDISER_PERM))
