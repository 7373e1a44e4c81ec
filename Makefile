# Fashion compatibility recommender: the everyday commands. See README.md.
PY      ?= .venv/bin/python
LIMIT   ?= 0
EPOCHS  ?= 30
ADDR    ?= 127.0.0.1:8000
VAR_DIR ?= var
BENCH_SIZES ?= 10000 100000 1000000
LAYOUTS_SIZE ?= 1000000
HM_DATA_DIR ?= ../shared/data/hm
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: venv demo test test-fast fuzz soak lint format bench bench-load backup restore worker beat serve migrate import train stop clean merchandiser

venv: .venv/.installed

.venv/.installed: requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $@

## demo: venv, embedded services, migrate, import the H&M sample, train on Celery, embed, serve at http://$(ADDR)
demo: venv
	$(PY) manage.py demo --limit $(LIMIT) --epochs $(EPOCHS) --addr $(ADDR)

## test: the whole suite against the real PostgreSQL + pgvector, Redis and a real Celery worker
test: venv
	$(PY) -m pytest

## fuzz: schemathesis, randomized, FUZZ_EXAMPLES (200) examples per API operation, anonymous and as a merchandiser
fuzz: venv
	FUZZ_RANDOM=1 FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-200} $(PY) -m pytest tests/test_fuzz.py -k no_input -q

test-fast: venv
	$(PY) -m pytest -m "not e2e and not slow"

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: venv
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

## bench: throughput figures written to ml/benchmarks/results/{towers,pipeline,serving,http,import}.json (README "Benchmarks")
## (the 1M-product serving size loads and indexes for ~20 min on 2 cores: BENCH_SIZES="10000 100000" skips it;
## the vector layouts at LAYOUTS_SIZE, four graphs of 1M rows built one after the other, take ~55 min: LAYOUTS_SIZE=0 skips them)
bench: venv migrate
	$(PY) -m ml.benchmarks.bench_towers
	$(PY) manage.py bench_pipeline
	$(PY) manage.py bench_serving --sizes $(BENCH_SIZES)
	$(PY) manage.py bench_serving --vectors texts --sizes 10000 100000
	if [ "$(LAYOUTS_SIZE)" != 0 ]; then $(PY) manage.py bench_layouts --size $(LAYOUTS_SIZE); fi
	$(PY) manage.py bench_http
	$(PY) manage.py bench_import

## bench-load: 200 concurrent shoppers for 2 minutes against the demo's gunicorn (after `make demo`):
## 0 5xx and the server's PostgreSQL connections within their bound, to ml/benchmarks/results/load.json
bench-load: venv
	$(PY) manage.py bench_load --users 200 --seconds 120

## soak: 10 min of Locust traffic (50 users, uploads included) while the worker is killed and Redis and
## PostgreSQL restart, on a private copy of the demo's catalog; figures to ml/benchmarks/results/soak.json
soak: venv
	$(PY) manage.py soak --users 50 --minutes 10

## backup: database dump + model artifacts + photos to VAR_DIR/backups/<time> (or OUT=folder)
backup: venv
	$(PY) manage.py backup $(if $(OUT),--out $(OUT))

## restore: FROM=<backup folder> into an empty database (e.g. a fresh VAR_DIR=var/restored)
restore: venv
	@test -n "$(FROM)" || { echo "usage: make restore FROM=var/backups/<folder> [VAR_DIR=var/restored]"; exit 2; }
	VAR_DIR=$(VAR_DIR) $(PY) manage.py restore $(FROM)

migrate: venv
	$(PY) manage.py migrate

import: venv
	$(PY) manage.py import_catalog hm $(HM_DATA_DIR) $(if $(filter-out 0,$(LIMIT)),--limit $(LIMIT))

worker: venv
	$(PY) -m celery -A recommender worker -Q embedding,training -c 1 --loglevel INFO

## beat: the periodic tasks (reconciliation, retention, retrain-if-changed); run exactly one per deployment
beat: venv
	$(PY) -m celery -A recommender beat --loglevel INFO

serve: venv
	$(PY) manage.py runserver $(ADDR)

## merchandiser: a user who may sign in to the upload, import and models pages (VAR_DIR's database)
merchandiser: venv
	VAR_DIR=$(VAR_DIR) $(PY) manage.py createsuperuser

## stop: stop the demo's web server (gunicorn), its workers and the embedded PostgreSQL
stop:
	-pid=$$(cat $(VAR_DIR)/web.pid 2>/dev/null) && ps -o args= -p "$$pid" | grep -q gunicorn && kill -TERM -"$$pid" && echo "stopped the web server"; rm -f $(VAR_DIR)/web.pid
	-pid=$$(cat $(VAR_DIR)/worker.pid 2>/dev/null) && ps -o args= -p "$$pid" | grep -q celery && kill -TERM -"$$pid" && echo "stopped the worker"; rm -f $(VAR_DIR)/worker.pid
	-pid=$$(cat $(VAR_DIR)/embedder.pid 2>/dev/null) && ps -o args= -p "$$pid" | grep -q celery && kill -TERM -"$$pid" && echo "stopped the embedding worker"; rm -f $(VAR_DIR)/embedder.pid
	-$(PY) -c "from pathlib import Path; from recommender.db import stop_embedded; print('stopped embedded PostgreSQL' if stop_embedded(Path('$(VAR_DIR)')) else 'embedded PostgreSQL not running')"

clean: stop
	rm -rf $(VAR_DIR)
