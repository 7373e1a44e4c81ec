"""Routes of the server-rendered shopper pages; the root URLconf includes them at ``""``."""

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
    path("manage/upload", views.product_upload_page, name="product-upload"),
]
