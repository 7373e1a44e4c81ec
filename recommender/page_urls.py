"""Routes of the server-rendered pages (shoppers, then merchandisers); the root URLconf includes them at ``""``."""

from django.contrib.auth import views as auth_views
from django.urls import path

from recommender import views

urlpatterns = [
    path("", views.catalog_page, name="catalog"),
    path("search", views.search_page, name="search"),
    path("search/photo", views.photo_search_page, name="photo-search"),
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
    path("manage/upload", views.product_upload_page, name="product-upload"),
    path("manage/products/<int:pk>/edit", views.product_edit_page, name="product-edit"),
    path("manage/products/<int:pk>/delete", views.product_delete_page, name="product-delete"),
    path("manage/outfits", views.outfit_list_page, name="outfit-list"),
    path("manage/outfits/new", views.outfit_save_page, name="outfit-save"),
    path("manage/outfits/<int:pk>/delete", views.outfit_delete_page, name="outfit-delete"),
    path("manage/import", views.import_page, name="import"),
    path("manage/import/example.csv", views.import_example_csv, name="import-example"),
    path("manage/import/<int:pk>", views.import_job_page, name="import-job"),
    path("manage/import/<int:pk>/rejected.csv", views.import_report_csv, name="import-report"),
]
