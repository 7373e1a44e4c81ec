"""Request logging: one log line per request with its id, method, path, status and duration.

``RequestLogMiddleware`` gives every request an id (the caller's ``X-Request-ID`` when it is a safe
token, else a new UUID4 hex), sends it back in the ``X-Request-ID`` response header, and logs on the
``recommender.requests`` logger::

    INFO GET /api/search/ 200 12.4 ms

with the fields ``request_id``, ``method``, ``path``, ``status`` and ``duration_ms`` as record
attributes, so ``LOG_FORMAT=json`` (python-json-logger, settings ``LOGGING``) writes them as JSON keys.
:class:`RequestIdFilter` adds the current request id to every other record logged while the request
runs (``request_id`` is ``"-"`` outside a request).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

logger = logging.getLogger("recommender.requests")

#: The request id of the request this thread is serving ("-" outside one).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
#: A caller's X-Request-ID is kept only when it matches this (no spaces, quotes or control characters).
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the current request's id, or ``"-"``) to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class RequestLogMiddleware:
    """Logs one line per request: method, path, status, duration in ms, request id (see module doc).

    5xx answers log at ERROR, 4xx at WARNING, the rest at INFO. The query string is not logged (it may
    hold search text); the path is.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = rid
        token = request_id_var.set(rid)
        start = time.perf_counter()
        try:
            response = self.get_response(request)
        finally:
            duration_ms = round((time.perf_counter() - start) * 1000, 1)
            request_id_var.reset(token)
        response["X-Request-ID"] = rid
        status = response.status_code
        level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
        user = getattr(request, "user", None)
        logger.log(
            level,
            "%s %s %s %.1f ms",
            request.method,
            request.path,
            status,
            duration_ms,
            extra={
                "request_id": rid,
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": duration_ms,
                "user_id": user.pk if user is not None and user.is_authenticated else None,
            },
        )
        return response
