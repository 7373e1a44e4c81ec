"""Server-rendered catalog pages: the product grid for shoppers, and the merchandiser pages that change the
catalog (upload, edit, delete, curated outfits, bulk import).

Each page validates a form (``catalog.forms``) and calls a service to write; a service's error comes back
on the form, next to the field it names. Merchandiser pages need ``catalog.add_product``.
"""

from __future__ import annotations

import csv
import io
from urllib.parse import quote

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_safe

from catalog.forms import (
    PROPOSED,
    ConfirmForm,
    ImportForm,
    MappingConfirmForm,
    MappingFormSet,
    OutfitSaveForm,
    ProductEditForm,
    ProductFilterForm,
    ProductForm,
)
from catalog.images import ImageError, read_upload
from catalog.imports import (
    IMPORT_OPTIONAL_COLUMNS,
    IMPORT_REQUIRED_COLUMNS,
    ImportFileError,
    csv_preview,
    import_job_confirm,
    import_job_create,
    import_mapping_get,
)
from catalog.mapping import TARGET_LABELS, TARGETS, ColumnMapping, Rule, mapping_propose
from catalog.models import ImportJob, Outfit, Product
from catalog.permissions import merchandiser_required
from catalog.selectors import import_job_get, import_job_list, outfit_list_curated, product_get, shop_order
from catalog.services import outfit_create, outfit_delete, product_create, product_delete, product_update
from ml.slots import SLOTS

PAGE_SIZE = 24


def not_found(request: HttpRequest, message: str) -> HttpResponse:
    """The site's 404 page with a sentence saying what was not found."""
    return render(request, "not_found.html", {"message": message}, status=404)


# --- shoppers ---------------------------------------------------------------------------------------------


@require_safe  # a read-only page: POST/PUT/DELETE answer 405
def product_list_page(request: HttpRequest) -> HttpResponse:
    """``/``: the product grid, filterable by slot, colour, who it is for and type (each value with its
    count), 24 per page: outfit garments first, then bags and accessories, underwear and the like last;
    ``?sort=new`` shows the newest first (new arrivals, where an import's "Open the catalog" leads)."""
    form = ProductFilterForm(request.GET)
    given = form.given()
    qs = Product.objects.filter_facets(**given) if form.is_valid() else Product.objects.none()
    new = form.is_valid() and form.cleaned_data.get("sort") == "new"
    qs = qs.order_by("-created_at", "-id") if new else shop_order(qs)
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "catalog/product_list.html",
        {
            "page": page,
            "form": form,
            "facets": form.facet_counts() if form.is_valid() else {},
            "filtered": bool(given) or not form.is_valid(),
            "new_arrivals": new,
        },
    )


# --- products ---------------------------------------------------------------------------------------------


@merchandiser_required
def product_upload_page(request: HttpRequest) -> HttpResponse:
    """``/manage/upload``: a merchandiser adds one product; errors show inline and nothing is created."""
    form = ProductForm(request.POST, request.FILES) if request.method == "POST" else ProductForm()
    if form.is_bound and form.is_valid():
        data = form.product_data()
        try:
            product = product_create(image_bytes=read_upload(form.cleaned_data["image"]), **data)
        except (ImageError, ValueError) as exc:
            form.add_service_error(exc)
        else:
            return redirect(reverse("product", args=[product.pk]) + "?uploaded=1")
    return render(request, "catalog/product_upload.html", {"form": form})


@merchandiser_required
def product_edit_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``/manage/products/<pk>/edit``: change details and optionally the photo; errors inline, nothing
    written on error; a changed photo, text or slot re-queues the product's embedding."""
    product = product_get(product_id=pk)
    if product is None:
        return not_found(request, f"There is no product with id {pk}.")
    if request.method == "POST":
        form = ProductEditForm.for_product(product, request.POST, request.FILES)
    else:
        form = ProductEditForm.for_product(product)
    if form.is_bound and form.is_valid():
        upload = form.cleaned_data["image"]
        try:
            changed = product_update(
                product=product,
                data=form.product_data(),
                image_bytes=read_upload(upload) if upload is not None else None,
            )
        except (ImageError, ValueError) as exc:
            form.add_service_error(exc)
        else:
            if changed:
                messages.success(request, f"Saved: {', '.join(changed)} changed.")
            else:
                messages.info(request, "Nothing changed.")
            return redirect("product", pk=product.pk)
    return render(request, "catalog/product_edit.html", {"product": product, "form": form})


@merchandiser_required
def product_delete_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``/manage/products/<pk>/delete``: GET asks for confirmation, POST deletes."""
    product = product_get(product_id=pk)
    if product is None:
        return not_found(request, f"There is no product with id {pk}.")
    form = ConfirmForm(request.POST) if request.method == "POST" else ConfirmForm()
    if form.is_bound and form.is_valid():
        title = str(product)
        product_delete(product=product)
        messages.success(request, f"Deleted {title}.")
        return redirect("catalog")
    return render(
        request,
        "catalog/product_delete.html",
        {"product": product, "form": form, "n_outfits": product.outfits.count()},
    )


# --- curated outfits --------------------------------------------------------------------------------------


@merchandiser_required
def outfit_list_page(request: HttpRequest) -> HttpResponse:
    """``/manage/outfits``: curated outfits (training data), 24 per page, each with a delete button."""
    page = Paginator(outfit_list_curated(), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "catalog/outfit_list.html", {"page": page})


@merchandiser_required
def outfit_save_page(request: HttpRequest) -> HttpResponse:
    """``POST /manage/outfits/new`` (from the outfit builder): save ``ids`` as a curated outfit; on an
    error, back to the builder with the reason."""
    if request.method != "POST":
        return redirect("outfit-list")
    form = OutfitSaveForm(request.POST)
    if form.is_valid():
        ids = form.cleaned_data["ids"]
        try:
            outfit = outfit_create(product_ids=ids, name=form.cleaned_data["name"])
        except ValueError as exc:
            form.add_service_error(exc)
        else:
            messages.success(
                request, f"Saved “{outfit}” ({len(ids)} items) as a curated outfit for training."
            )
            return redirect("outfit-list")
    messages.error(request, f"The outfit was not saved: {form.errors_text()}.")
    return redirect(f"{reverse('outfit')}?ids={quote(form.data.get('ids', ''), safe=',')}")


@merchandiser_required
def outfit_delete_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``POST /manage/outfits/<pk>/delete``: delete a curated outfit."""
    if request.method == "POST" and ConfirmForm(request.POST).is_valid():
        outfit = Outfit.objects.filter(pk=pk).first()
        if outfit is None:
            messages.error(request, f"There is no outfit {pk}.")
        else:
            outfit_delete(outfit=outfit)
            messages.success(request, f"Deleted {outfit}.")
    return redirect("outfit-list")


# --- bulk import ------------------------------------------------------------------------------------------

#: The columns of an import CSV: the required ones, then the other product fields.
IMPORT_COLUMNS = (*IMPORT_REQUIRED_COLUMNS, *IMPORT_OPTIONAL_COLUMNS)
#: The example CSV offered on the import page (real H&M articles; the zip holds their photos).
EXAMPLE_CSV = (
    ",".join(IMPORT_COLUMNS)
    + "\n"
    + (
        "0108775015,Strap top,top,0108775015.jpg,Black,Vest top,Ladieswear,9.99,"
        '"Jersey top with narrow shoulder straps.",0108775\n'
        "0110065001,OP T-shirt (Idro),top,photos/0110065001.jpg,Black,Bra,Lingeries/Tights,,"
        '"Microfibre T-shirt bra with underwired, moulded, lightly padded cups.",0110065\n'
    )
)


@merchandiser_required
def import_page(request: HttpRequest) -> HttpResponse:
    """``/manage/import``: upload a CSV and a zip of photos; the import runs on a worker (ImportJob). A
    file not in our own format goes to its column mapping page first, unless a mapping was chosen."""
    form = ImportForm(request.POST, request.FILES) if request.method == "POST" else ImportForm()
    if form.is_bound and form.is_valid():
        try:
            chosen = form.cleaned_data["mapping"]
            job = import_job_create(
                csv_upload=form.cleaned_data["csv"],
                zip_upload=form.cleaned_data["images"],
                user=request.user,
                mapping=import_mapping_get(chosen) if chosen else None,
            )
        except (ImportFileError, ValueError) as exc:
            form.add_service_error(exc)
        else:
            if job.status == ImportJob.Status.DRAFT:
                return redirect("import-columns", pk=job.pk)
            return redirect("import-job", pk=job.pk)
    context = {
        "form": form,
        "jobs": import_job_list(limit=10),
        "required": IMPORT_REQUIRED_COLUMNS,
        "optional": IMPORT_OPTIONAL_COLUMNS,
        "slots": SLOTS,
    }
    return render(request, "catalog/import.html", context)


@merchandiser_required
def import_example_csv(request: HttpRequest) -> HttpResponse:
    """``/manage/import/example.csv``: a CSV with every column, to copy."""
    response = HttpResponse(EXAMPLE_CSV, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="products-example.csv"'
    return response


@merchandiser_required
def import_job_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``/manage/import/<pk>``: progress (polled by static/js/progress.js), counts and rejected rows."""
    try:
        job = import_job_get(job_id=pk)
    except ImportJob.DoesNotExist:
        return not_found(request, f"There is no import job {pk}.")
    return render(request, "catalog/import_job.html", {"job": job, "rejections": job.rejections[:200]})


@merchandiser_required
def import_report_csv(request: HttpRequest, pk: int) -> HttpResponse:
    """``/manage/import/<pk>/rejected.csv``: the rejected rows (row, sku, field, message) as CSV."""
    try:
        job = import_job_get(job_id=pk)
    except ImportJob.DoesNotExist:
        return not_found(request, f"There is no import job {pk}.")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["row", "sku", "field", "message"])
    if job.file_error:
        writer.writerow(["", "", "file", job.file_error])
    writer.writerows([r["row"], r["sku"], r["field"], r["message"]] for r in job.rejections)
    response = HttpResponse(buf.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{job.pk}-rejected.csv"'
    return response


@merchandiser_required
def import_columns_page(request: HttpRequest, pk: int) -> HttpResponse:
    """``/manage/import/<pk>/columns``: the uploaded CSV's columns with sample values and the proposed
    mapping to our fields (a preset, by name, by content); the merchandiser confirms or changes each
    field, may save the mapping by name, and the import is queued."""
    try:
        job = import_job_get(job_id=pk)
    except ImportJob.DoesNotExist:
        return not_found(request, f"There is no import job {pk}.")
    if job.status != ImportJob.Status.DRAFT:
        return redirect("import-job", pk=job.pk)
    with job.csv_file.open("rb") as fh:
        csv_bytes = fh.read()
    try:
        header, sample, n_rows = csv_preview(csv_bytes, rows=20)
    except ImportFileError as exc:
        messages.error(request, f"This file cannot be imported: {exc}")
        return redirect("import")
    proposal = mapping_propose(header, sample)
    rules = proposal.mapping.fields
    kwargs = {"columns": header, "proposed": rules}
    if request.method == "POST":
        formset = MappingFormSet(request.POST, form_kwargs=kwargs)
        confirm = MappingConfirmForm(request.POST)
        if formset.is_valid() and confirm.is_valid():
            chosen: dict[str, Rule] = {}
            for f in formset.cleaned_data:
                source, target = f.get("source", ""), f.get("target", "")
                if target not in TARGETS or not source:
                    continue
                keep = source == PROPOSED or (target in rules and rules[target].columns == (source,))
                chosen[target] = rules[target] if keep and target in rules else Rule(columns=(source,))
            missing = [TARGET_LABELS[t] for t in ("sku", "title") if t not in chosen]
            if missing:
                confirm.add_error(None, f"Choose the column that holds the {' and the '.join(missing)}.")
            else:
                mapping = ColumnMapping(
                    chosen,
                    proposal.mapping.group_by,
                    proposal.mapping.fill_down,
                    confirm.cleaned_data["save_as"],
                )
                try:
                    import_job_confirm(
                        job=job, mapping=mapping, save_as=confirm.cleaned_data["save_as"], user=request.user
                    )
                except ValueError as exc:
                    messages.error(request, str(exc))
                return redirect("import-job", pk=job.pk)
    else:
        initial = [{"target": t, "source": _initial_source(rules.get(t))} for t in TARGETS]
        formset = MappingFormSet(initial=initial, form_kwargs=kwargs)
        confirm = MappingConfirmForm()
    mapped_to = {c.lower(): TARGET_LABELS[t] for t, r in rules.items() for c in r.columns}
    columns = [
        {
            "name": h,
            "samples": [row[i] for row in sample[:3] if i < len(row) and row[i].strip()][:3],
            "to": mapped_to.get(h.lower(), ""),
        }
        for i, h in enumerate(header)
    ]
    context = {
        "job": job,
        "formset": formset,
        "confirm": confirm,
        "columns": columns,
        "n_rows": n_rows,
        "preset": proposal.preset and proposal.mapping.name,
        "how": proposal.how,
    }
    return render(request, "catalog/import_columns.html", context)


def _initial_source(rule: Rule | None) -> str:
    """The mapping page's initial choice for a proposed rule: its column, or "as proposed"."""
    if rule is None:
        return ""
    if len(rule.columns) == 1 and not rule.transform and not rule.template:
        return rule.columns[0]
    return PROPOSED
