"""Django admin for the catalog: products (with photo preview), outfits and their items."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from catalog.models import ImportJob, Outfit, OutfitItem, Product
from catalog.signals import products_changed_on_commit
from ml.audience import audience_group


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = (
        "thumb",
        "sku",
        "title",
        "slot",
        "product_type",
        "colour",
        "audience",
        "audience_group",
        "price",
        "updated_at",
    )
    list_filter = ("slot", "audience_group", "audience", "source")
    search_fields = ("sku", "title", "product_type", "colour", "description")
    # derived on save from audience, section and department (ml.audience), never typed in
    readonly_fields = ("thumb", "audience_group", "image_sha256", "created_at", "updated_at")

    @admin.display(description="photo")
    def thumb(self, obj: Product) -> str:
        return (
            format_html('<img src="{}" alt="{}" style="height:60px">', obj.thumbnail.url, obj.title)
            if obj.thumbnail
            else "—"
        )

    def save_model(self, request, obj, form, change) -> None:
        obj.audience_group = audience_group(obj.audience, obj.section, obj.department)
        super().save_model(request, obj, form, change)
        # vectors follow every edit (announced after commit; the recommender re-embeds)
        products_changed_on_commit(
            product_ids=[obj.pk], change="updated" if change else "created", vectors_stale=True
        )


class OutfitItemInline(admin.TabularInline):
    model = OutfitItem
    extra = 1
    raw_id_fields = ("product",)


@admin.register(Outfit)
class OutfitAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "source", "split", "created_at")
    list_filter = ("source", "split")
    search_fields = ("name", "external_id")
    inlines = [OutfitItemInline]


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    """Bulk imports, read-only (they are started from /manage/import and run on a worker)."""

    list_display = (
        "id",
        "csv_name",
        "status",
        "total",
        "created",
        "updated",
        "rejected",
        "started_by",
        "created_at",
    )
    list_filter = ("status",)
    readonly_fields = [f.name for f in ImportJob._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
