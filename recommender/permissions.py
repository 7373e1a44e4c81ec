"""API permissions: shoppers read anonymously; writes need the merchandiser permission."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

MERCHANDISER_PERM = "catalog.add_product"


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
