"""gunicorn settings of every server the project starts: ``manage.py demo``, ``bench_load`` and compose.

gunicorn reads ``./gunicorn.conf.py`` by itself (compose's working folder is the repo root); the demo
passes ``-c`` with this file. Threaded workers (``gthread``): ``WEB_CONCURRENCY`` processes (gunicorn's
own variable) × ``WEB_THREADS`` threads. Each process holds at most ``DB_POOL_MAX_SIZE`` PostgreSQL
connections (``recommender/settings/base.py``), by default as many as it has threads, so no request
waits for a connection and the server never opens more than processes × ``DB_POOL_MAX_SIZE``.
Command-line options (``--bind``, ``--workers``) override these.
"""

import os

wsgi_app = "recommender.wsgi:application"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS") or max(1, int(os.environ.get("DB_POOL_MAX_SIZE", "4"))))
timeout = 120  # seconds a request may take before its worker is restarted (a text search loads the towers)
graceful_timeout = 30
backlog = 2048  # connections waiting for a thread (a burst queues here instead of being refused)
keepalive = 5
# gunicorn 27's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl), which every
# server on the machine would share; nothing here uses it.
control_socket_disable = True
