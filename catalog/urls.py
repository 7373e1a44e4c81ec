"""Routes of the catalog's JSON API (``api_urlpatterns``).

The site's root URLconf splices them in among the other apps' routes at ``api/``; names are global
(no namespace), as ``reverse("api-products")`` and the tests use them.
"""

from django.urls import path

from catalog import apis

api_urlpatterns = [
    path("products/", apis.ProductListApi.as_view(), name="api-products"),
    path("products/<int:pk>/", apis.ProductDetailApi.as_view(), name="api-product"),
    path("import-jobs/<int:pk>/", apis.ImportJobDetailApi.as_view(), name="api-import-job"),
]
