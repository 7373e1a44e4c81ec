"""Uploading real H&M articles through the product API, for the end-to-end tests."""

from __future__ import annotations

import io

from rest_framework.test import APIClient


def api_upload(api: APIClient, art) -> tuple[int, bytes]:
    """POST an ``ml.data.Article`` (its photo and fields) to ``/api/products/`` as SKU ``UPLOAD-<article id>``.

    Returns:
        (the new product's id, the photo's bytes as uploaded).

    Raises:
        AssertionError: the API did not answer 201 (the message holds its answer).
    """
    photo = art.image_path.read_bytes()
    r = api.post(
        "/api/products/",
        {
            "sku": "UPLOAD-" + art.article_id,
            "title": art.title,
            "slot": art.slot,
            "product_type": art.product_type,
            "colour": art.colour,
            "description": art.description,
            "image": io.BytesIO(photo),
        },
        format="multipart",
    )
    assert r.status_code == 201, r.content
    return r.json()["id"], photo
