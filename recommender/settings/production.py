"""Production settings: ``base`` hardened for a deployment behind a TLS-terminating proxy.

No default secret, HTTPS-only cookies, HSTS. Selected by ``DJANGO_SETTINGS_MODULE=recommender.settings.production``,
or by ``DJANGO_DEBUG=false`` with the default ``recommender.settings``.
"""

from recommender.settings.base import *  # noqa: F403
from recommender.settings.base import env

DEBUG = False
SECRET_KEY = env("DJANGO_SECRET_KEY")  # raises ImproperlyConfigured when unset
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 30)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
#: Cookies only over HTTPS; ``manage.py demo`` serving plain HTTP sets ``DJANGO_SECURE_COOKIES=false``.
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # container health checks call http://127.0.0.1:8000/healthz
if not SECURE_HSTS_PRELOAD:  # joining the browsers' preload list is a deliberate, lasting choice
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
