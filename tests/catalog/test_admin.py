"""The Django admin lists and searches real products."""

import pytest
from django.contrib.auth.models import User

from catalog.models import Product


@pytest.mark.django_db
@pytest.mark.slow
def test_admin_product_changelist_searches(trained_catalog, client):
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    client.login(username="admin", password="pw")
    p = Product.objects.filter(slot="bottom").first()
    r = client.get("/admin/catalog/product/", {"q": p.sku})
    assert r.status_code == 200
    body = r.content.decode()
    assert p.title in body and f'alt="{p.title}"' in body
    assert client.get(f"/admin/catalog/product/{p.pk}/change/").status_code == 200
