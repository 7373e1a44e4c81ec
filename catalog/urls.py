"""Routes of the catalog's pages (``urlpatterns``) and JSON API (``api_urlpatterns``).

The site's root URLconf splices them in among the other apps' routes at ``""`` and ``api/``; names
are global (no namespace), as ``{% url 'product-upload' %}`` and the tests use them.
"""

from django.urls import path

from catalog import apis, views

urlpatterns = [
    path("", views.product_list_page, name="catalog"),
    path("manage/upload", views.product_upload_page, name="product-upload"),
    path("manage/products/<int:pk>/edit", views.product_edit_page, name="product-edit"),
    path("manage/products/<int:pk>/delete", views.product_delete_page, name="product-delete"),
    path("manage/outfits", views.outfit_list_page, name="outfit-list"),
    path("manage/outfits/new", views.outfit_save_page, name="outfit-save"),
    path("manage/outfits/<int:pk>/delete", views.outfit_delete_page, name="outfit-delete"),
    path("manage/import", views.import_page, name="import"),
    path("manage/import/example.csv", views.import_example_csv, name="import-example"),
    path("manage/import/<int:pk>", views.import_job_page, name="import-job"),
    path("manage/import/<int:pk>/columns", views.import_columns_page, name="import-columns"),
    path("manage/import/<int:pk>/rejected.csv", views.import_report_csv, name="import-report"),
]

api_urlpatterns = [
    path("products/", apis.ProductListApi.as_view(), name="api-products"),
    path("products/<int:pk>/", apis.ProductDetailApi.as_view(), name="api-product"),
    path("import-jobs/<int:pk>/", apis.ImportJobDetailApi.as_view(), name="api-import-job"),
]
