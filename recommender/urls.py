"""URLs: pages at the root, the JSON API under /api/, OpenAPI schema and Swagger UI, admin.

The catalog's routes (``catalog.urls``) are spliced in beside the recommender's, names unchanged.
"""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from catalog import urls as catalog_urls
from recommender import apis
from recommender.api import api_not_found, server_error
from recommender.health import healthz

api = [
    *catalog_urls.api_urlpatterns,
    path("products/<int:pk>/similar/", apis.SimilarApi.as_view(), name="api-similar"),
    path("search/", apis.SearchApi.as_view(), name="api-search"),
    path("search/photo/", apis.PhotoSearchApi.as_view(), name="api-photo-search"),
    path("complete-the-look/", apis.CompleteTheLookApi.as_view(), name="api-complete-the-look"),
    path("compatibility/", apis.CompatibilityApi.as_view(), name="api-compatibility"),
    path("model-versions/", apis.ModelVersionListApi.as_view(), name="api-model-versions"),
    path("model-versions/rollback/", apis.ModelVersionRollbackApi.as_view(), name="api-model-rollback"),
    path(
        "model-versions/<int:pk>/activate/", apis.ModelVersionActivateApi.as_view(), name="api-model-activate"
    ),
    path("training-runs/", apis.TrainingRunListApi.as_view(), name="api-training-runs"),
    path("training-runs/<int:pk>/", apis.TrainingRunDetailApi.as_view(), name="api-training-run"),
    path("training-runs/<int:pk>/cancel/", apis.TrainingRunCancelApi.as_view(), name="api-training-cancel"),
    path("training-runs/<int:pk>/live/", apis.TrainingRunLiveApi.as_view(), name="api-training-run-live"),
    path("products/<int:pk>/index-status/", apis.ProductIndexStatusApi.as_view(), name="api-product-index"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"^.*$", api_not_found),
]

handler500 = server_error  # no internals, whatever DEBUG says
handler404 = "recommender.views.page_not_found"  # "/products/12/" redirects to "/products/12"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/", include(api)),
    path("", include("recommender.page_urls")),
]
if settings.DEBUG or settings.SERVE_MEDIA:
    # not django.conf.urls.static.static(): it serves nothing once DEBUG is off (compose, production)
    urlpatterns += [
        re_path(
            rf"^{settings.MEDIA_URL.strip('/')}/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}
        )
    ]
