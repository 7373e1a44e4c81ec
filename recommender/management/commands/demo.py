"""``python manage.py demo``: the whole path on the real catalog, timed phase by phase.

Starts Redis if none answers, migrates, imports the H&M sample, starts a real Celery worker, trains
on it (fine-tune → evaluate → embed → activate when the quality gate lets it), prints how long each phase took, then serves the
site at http://127.0.0.1:8000 through gunicorn (``gunicorn.conf.py``, as compose does: threaded workers,
a bounded PostgreSQL pool per process) with ``DEBUG`` off unless ``--debug`` (loopback only);
``--no-serve`` stops before serving. Once serving, it queues a second run that tunes the image tower for
phone photos (``--no-photo-tuning`` skips it) and starts a worker for uploads' embeddings beside the one
that trains. ``make stop`` stops the server and the workers it leaves running.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recommender import runtime
from recommender.celery import app
from recommender.models import ModelVersion, TrainingRun
from recommender.services import TrainingRunBusy, model_version_activate, training_run_start


class Command(BaseCommand):
    help = (
        "Import the H&M sample and the MANGO stylists' outfits, train on Celery, embed, and serve "
        "(the `make demo` path)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--data", default=str(settings.HM_DATA_DIR), help="the H&M sample (HM_DATA_DIR)")
        parser.add_argument(
            "--mango",
            default=str(settings.MANGO_DATA_DIR),
            help="the MANGO sample (MANGO_DATA_DIR); its stylists' outfits teach compatibility; '' = skip",
        )
        parser.add_argument(
            "--limit", type=int, default=0, help="import at most N products of each catalog (0 = all)"
        )
        parser.add_argument("--epochs", type=int, default=30)
        parser.add_argument("--addr", default="127.0.0.1:8000")
        parser.add_argument("--no-serve", action="store_true")
        parser.add_argument(
            "--debug", action="store_true", help="serve with DEBUG on (tracebacks; loopback addresses only)"
        )
        parser.add_argument(
            "--no-photo-tuning",
            action="store_true",
            help="do not queue the second run that tunes the image tower for phone photos once the site serves",
        )

    def handle(self, *args, **opts):
        from recommender import tasks  # noqa: F401  (registers the tasks before the worker starts)

        timings: dict[str, float] = {}
        var = Path(settings.VAR_DIR)
        start = time.perf_counter()

        def phase(name: str, t0: float) -> None:
            timings[name] = round(time.perf_counter() - t0, 1)
            self.stdout.write(self.style.SUCCESS(f"[{name}] {timings[name]:.1f} s"))

        try:
            web_env = runtime.web_env(addr=opts["addr"], var_dir=var, debug=opts["debug"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        t = time.perf_counter()
        try:
            self.stdout.write(runtime.ensure_redis(settings.REDIS_URL, var))
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"PostgreSQL: {settings.DATABASES['default'].get('HOST') or 'DATABASE_URL'}")
        call_command("migrate", verbosity=0)
        phase("services+migrate", t)

        # a run an earlier demo left queued or running would start on the half-imported catalog
        busy = TrainingRun.objects.filter(status__in=[TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING])
        busy.update(status=TrainingRun.Status.FAILED, error="abandoned: a new demo run started")
        # the worker starts (imports torch, connects) while the catalog is imported
        (var / "logs").mkdir(parents=True, exist_ok=True)
        worker = runtime.start_worker(
            queues="embedding,training", concurrency=1, logfile=var / "logs" / "worker.log"
        )
        (var / "worker.pid").write_text(str(worker.pid))

        t = time.perf_counter()
        try:
            call_command("import_catalog", "hm", opts["data"], limit=opts["limit"] or None)
            if opts["mango"] and (Path(opts["mango"]) / "products.csv").exists():
                call_command("import_catalog", "mango", opts["mango"], limit=opts["limit"] or None)
            elif opts["mango"]:
                self.stdout.write(f"no MANGO sample at {opts['mango']}: training on the H&M baskets alone")
        except BaseException:  # a failed or interrupted import leaves no worker behind
            with contextlib.suppress(Exception):  # the import's error is the one to report
                runtime.stop_worker(worker)
                (var / "worker.pid").unlink(missing_ok=True)
            raise
        phase("import", t)

        t = time.perf_counter()
        if not runtime.wait_for_worker(app, timeout=90):
            raise CommandError(f"the Celery worker did not come up; see {var / 'logs' / 'worker.log'}")
        phase("worker start", t)

        t = time.perf_counter()
        # a fresh install serves its first version as soon as it is embedded; it is evaluated meanwhile
        run = training_run_start(params={"epochs": opts["epochs"], "serve_first": True})
        self.stdout.write(
            f"training run {run.pk} queued on Celery; worker log: {var / 'logs' / 'worker.log'}"
        )
        bar = tqdm(total=100, desc="train on Celery", unit="%")
        last, web = None, None
        try:
            while True:
                run.refresh_from_db()
                if "serving" not in timings and _serving(run):
                    timings["serving"] = round(time.perf_counter() - start, 1)
                    bar.write(
                        f"[serving] version {run.model_version_id} active {timings['serving']:.1f} s after the start"
                    )
                    if not opts["no_serve"]:
                        web = self._serve(opts, web_env, var)
                pp = run.phase_progress or {}
                state = (round(run.progress, 1), run.phase, run.step, pp.get("done"))
                if state != last:  # redraw only on change, so a logged run stays readable
                    bar.n = state[0]
                    if pp.get("total"):  # e.g. features: photos through the towers
                        eta = pp.get("eta_s")
                        bar.set_postfix_str(
                            f"{run.phase} {pp['done']}/{pp['total']}" + (f" ~{eta:.0f} s left" if eta else "")
                        )
                    else:
                        bar.set_postfix_str(f"{run.phase} step {run.step} loss {run.loss or 0:.3f}")
                    last = state
                if run.status in (
                    TrainingRun.Status.SUCCEEDED,
                    TrainingRun.Status.FAILED,
                    TrainingRun.Status.CANCELLED,
                ):
                    break
                if worker.poll() is not None:
                    raise CommandError(
                        f"the worker exited (code {worker.returncode}); see {var / 'logs' / 'worker.log'}"
                    )
                time.sleep(1.0)
            bar.close()
            if run.status != TrainingRun.Status.SUCCEEDED:
                raise CommandError(f"training run {run.pk} {run.status}: {run.error[:2000]}")
        except BaseException:  # a failed run stops the server it started early
            if web is not None:
                runtime.stop_worker(web)
                (var / "web.pid").unlink(missing_ok=True)
            raise
        phase("train+evaluate+embed on Celery", t)
        version = run.model_version
        gate = version.metrics.get("gate") or {}
        self.stdout.write(
            f"quality gate: {'passed' if gate.get('passed') else 'refused'}: {gate.get('reason')}"
        )
        if not version.is_active and not ModelVersion.objects.filter(is_active=True).exists():
            # the site needs a model to serve: activate it by hand, as a merchandiser could on /models
            model_version_activate(version=version, require_complete=True)
            self.stdout.write(
                self.style.WARNING(f"no version was active: version {version.pk} activated by hand")
            )
        for k, v in (version.metrics.get("timings") or {}).items():
            self.stdout.write(f"    {k}: {v:.1f} s")
        report = Path(version.artifact_path).parent / "report.md"
        if report.exists():
            self.stdout.write(f"evaluation on the held-out split ({report}):")
            self.stdout.write(report.read_text())
        (var / "demo_timings.json").write_text(
            json.dumps({"timings_s": timings, "version": version.pk, "limit": opts["limit"]}, indent=1)
        )
        self.stdout.write(self.style.SUCCESS("phase timings (s): " + json.dumps(timings)))
        if opts["no_serve"]:
            runtime.stop_worker(worker)
            (var / "worker.pid").unlink(missing_ok=True)
            return

        if not opts["no_serve"] and web is None:
            web = self._serve(opts, web_env, var)
        embedder = None
        if not opts["no_photo_tuning"]:
            embedder = self._queue_photo_tuning(var)
        try:
            if web is not None:
                web.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if web is not None:
                runtime.stop_worker(web)
            if embedder is not None:
                runtime.stop_worker(embedder)
            runtime.stop_worker(worker)
            # `make stop` must never signal a reused pid
            for name in ("web.pid", "worker.pid", "embedder.pid"):
                (var / name).unlink(missing_ok=True)

    def _queue_photo_tuning(self, var: Path):
        """Queue the run of the models page's "Tune the image tower for phone photos" box
        (:data:`recommender.forms.PHOTO_TUNING`: the last image-tower blocks tuned on phone-photo views,
        from the active version's heads) and start a second worker for the ``embedding`` queue, so that
        uploads are embedded while the first worker trains. Returns that worker's process, or None when
        another run is queued or running (nothing is queued then)."""
        from recommender.forms import PHOTO_TUNING

        try:
            run = training_run_start(params=dict(PHOTO_TUNING))
        except TrainingRunBusy as exc:
            self.stdout.write(f"photo tuning not queued: training run {exc.run.pk} is {exc.run.status}")
            return None
        embedder = runtime.start_worker(
            queues="embedding", concurrency=1, logfile=var / "logs" / "embedder.log", name="embedder"
        )
        (var / "embedder.pid").write_text(str(embedder.pid))
        self.stdout.write(
            f"training run {run.pk} queued: it tunes the image tower for shoppers' phone photos (about an "
            "hour on a 2-core CPU; progress on /models). The quality gate activates it when its photo search beats the "
            "serving version's."
        )
        return embedder

    def _serve(self, opts, web_env, var: Path):
        """Start gunicorn on the active version and warm it; returns the process."""
        t = time.perf_counter()
        call_command("collectstatic", interactive=False, verbosity=0)  # whitenoise serves STATIC_ROOT
        web = runtime.start_web(addr=opts["addr"], env=web_env, logfile=var / "logs" / "web.log")
        (var / "web.pid").write_text(str(web.pid))
        base = f"http://{opts['addr'].replace('0.0.0.0', '127.0.0.1')}"
        try:
            runtime.wait_for_http(f"{base}/healthz", web)
            # each gunicorn process builds the query towers on its first text search: do it before a shopper
            for i in range(8):
                runtime.wait_for_http(f"{base}/api/search/?q=warm+up+{i}&k=1", web)
        except RuntimeError as exc:
            runtime.stop_worker(web)
            raise CommandError(f"{exc}; see {var / 'logs' / 'web.log'}") from exc
        self.stdout.write(
            f"gunicorn up and warm in {time.perf_counter() - t:.1f} s; log: {var / 'logs' / 'web.log'}"
        )
        mode = "DEBUG on" if opts["debug"] else "DEBUG off"
        self.stdout.write(
            self.style.SUCCESS(f"serving at http://{opts['addr']}/  ({mode}; Ctrl-C or `make stop` stops it)")
        )
        at = "" if var == Path("var") else f" VAR_DIR={var}"
        self.stdout.write(
            f"merchandiser pages (/manage/upload, /manage/import, /models) need a sign-in: `make merchandiser{at}`"
            f" creates one; other commands on this database: `VAR_DIR={var} .venv/bin/python manage.py ...`"
        )
        return web


def _serving(run: TrainingRun) -> bool:
    """Is the run's version active already (a first version serves before its evaluation ends)?"""
    return (
        bool(run.model_version_id)
        and ModelVersion.objects.filter(pk=run.model_version_id, is_active=True).exists()
    )
