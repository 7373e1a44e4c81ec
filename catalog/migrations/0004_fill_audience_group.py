"""Fill ``Product.audience_group`` of the rows written before it existed (``ml.audience.audience_group`` of
each product's audience, section and department); every write path sets it from then on."""

from django.db import migrations

from ml.audience import audience_group


def fill(apps, schema_editor):
    Product = apps.get_model("catalog", "Product")
    batch = []
    for p in Product.objects.only("pk", "audience", "section", "department", "audience_group").iterator(
        chunk_size=2000
    ):
        group = audience_group(p.audience, p.section, p.department)
        if group != p.audience_group:
            p.audience_group = group
            batch.append(p)
        if len(batch) >= 2000:
            Product.objects.bulk_update(batch, ["audience_group"])
            batch.clear()
    Product.objects.bulk_update(batch, ["audience_group"])


class Migration(migrations.Migration):
    dependencies = [("catalog", "0003_audience_group_mango_stylist")]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
