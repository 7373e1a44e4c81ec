"""Django admin for the model registry (read-mostly: runs and versions are written by the workers)."""

from __future__ import annotations

from django.contrib import admin

from recommender.models import ModelVersion, TrainingRun


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "is_active", "created_at", "activated_at")
    list_filter = ("status", "is_active")
    readonly_fields = ("config", "metrics", "artifact_path", "created_at", "activated_at")


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "phase", "progress", "step", "loss", "created_at", "finished_at")
    list_filter = ("status",)
    readonly_fields = (
        "params",
        "history",
        "log_tail",
        "error",
        "celery_task_id",
        "created_at",
        "started_at",
        "finished_at",
    )
