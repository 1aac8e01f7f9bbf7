# Continuous training of the diabetes-progression model. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
RUN_LOG := .artifacts/last-retrain.log
CONF ?= {}

.DEFAULT_GOAL := help
.PHONY: help install demo retrain airflow airflow-db serve test test-unit lint bench status db-stop clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

install: $(INSTALLED) ## create .venv and install the pinned requirements

demo: install ## seed the demo data, run the retrain DAG through Airflow, print the champion, score waiting patients
	$(PY) -m pipeline seed-demo
	@$(MAKE) --no-print-directory retrain
	$(PY) -m pipeline status
	@$(PY) -m pipeline simulate-arrivals --rows 20 --seed 1 --unlabelled > /dev/null
	$(PY) -m pipeline score

airflow-db: install
	@mkdir -p $(dir $(RUN_LOG))
	@$(PY) -m pipeline airflow db migrate > $(RUN_LOG) 2>&1 || (tail -40 $(RUN_LOG); exit 1)

retrain: airflow-db ## one more `retrain` DAG run through Airflow (CONF='{"margin": 0.02}' to set params)
	$(PY) -m pipeline init-db > /dev/null
	@echo "running the retrain DAG (log: $(RUN_LOG))"
	@$(PY) -m pipeline airflow dags test retrain -c '$(CONF)' > $(RUN_LOG) 2>&1 \
		|| (grep -E "ERROR|Error|error:|failed" $(RUN_LOG) | tail -20; echo "retrain failed; full log: $(RUN_LOG)"; exit 1)
	@grep -o "DagRun Finished: dag_id=retrain.*state=[a-z]*" $(RUN_LOG) | sed 's/, run_start_date.*state=/ -> /'

EXECUTOR ?= local
WORKERS ?= 2

airflow: airflow-db ## start Airflow (scheduler, API server, UI); EXECUTOR=celery: Redis and WORKERS=2 Celery workers
	$(PY) -m pipeline init-db > /dev/null
ifeq ($(EXECUTOR),celery)
	$(PY) -m pipeline airflow-celery --workers $(WORKERS)
else ifeq ($(EXECUTOR),local)
	$(PY) -m pipeline airflow standalone
else
	@echo "EXECUTOR=$(EXECUTOR): use local (the default) or celery"; exit 2
endif

serve: install ## the REST API on http://127.0.0.1:8000 (tokens: PIPELINE_API_TOKEN_FILE; ARGS=--insecure-local without)
	$(PY) -m pipeline serve $(ARGS)

status: install ## the champion and the latest runs
	$(PY) -m pipeline status

TEST_PROCESSES ?= 2

test: install ## run every test (unit, integration on real PostgreSQL, DAGs through Airflow); TEST_PROCESSES=2
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadgroup -m "not live_airflow"
	$(PY) -m pytest -m live_airflow

test-unit: install ## the tests that need no database
	$(PY) -m pytest tests/unit

bench: install ## time and memory of each retrain stage at 10^4..10^6 rows (ARGS=--with-10m adds 10^7)
	$(PY) -m bench $(ARGS)

lint: install ## ruff (with Airflow rules) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

db-stop: ## stop the embedded PostgreSQL (its data stays in .pgdata; the next command starts it)
	@if test -x $(PY); then $(PY) -m pipeline db-stop; else echo "no .venv: nothing was started"; fi

clean: db-stop ## stop the embedded database, then remove it, the artifacts and the local Airflow home (keeps .venv)
	rm -rf .pgdata .artifacts .airflow
