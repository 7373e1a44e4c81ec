"""Request parsers of the JSON API (``REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]``)."""

from __future__ import annotations

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser as DRFJSONParser


class JSONParser(DRFJSONParser):
    """DRF's JSON parser, with nesting too deep for Python's ``json`` module (a ``RecursionError`` at
    about 1,000 levels, e.g. ``{"product_ids": [[[...]]]}``) answered as a 400 ``parse_error`` instead of
    a 500.

    Raises:
        ParseError: malformed JSON, or JSON nested too deeply.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply") from exc
