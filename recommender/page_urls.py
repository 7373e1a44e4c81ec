"""Routes of the server-rendered pages; the root URLconf includes them at ``""``.

The recommender's pages (search, product, outfit builder, models, sign-in), then the catalog's
(``catalog.urls``: the product grid and the merchandiser pages), spliced in with their names.
"""

from django.contrib.auth import views as auth_views
from django.urls import path

from catalog import urls as catalog_urls
from recommender import search_views, views

urlpatterns = [
    path("search", search_views.search_page, name="search"),
    path("search/photo", search_views.photo_search_page, name="photo-search"),
    path("products/<int:pk>", views.product_page, name="product"),
    path("outfit", views.outfit_page, name="outfit"),
    path("models", views.models_page, name="models"),
    path("models/train", views.training_start_page, name="training-start"),
    path("models/rollback", views.model_version_rollback_page, name="model-rollback"),
    path("models/<int:pk>/activate", views.model_version_activate_page, name="model-activate"),
    path("models/<int:pk>/compare.png", views.model_compare_png, name="model-compare-png"),
    # Merchandisers sign in here (no staff status needed; the admin keeps its own staff-only login).
    path("accounts/login/", views.SignInView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),  # POST only (Django 5)
    *catalog_urls.urlpatterns,
]
