# Two set-up commands: `make run` (the whole lifecycle once, locally) and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VAR := $(CURDIR)/var
ENV := . $(VAR)/env.sh &&
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# The demo's canary: shorter analyses than the production default (60 s, 50 requests).
CONF ?= {"canary_interval_s": 15, "canary_min_requests": 20}
MLFLOW_PORT ?= 5000

.PHONY: run test install lint up down clean

$(VENV)/.installed: requirements.txt pyproject.toml scripts/build_horovod.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the pinned CPU wheel; anything unpinned would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	# Horovod 0.28.1 needs a patched source build; the wheel is cached outside the clone
	# (~/.cache/aigc-lifecycle/horovod, per torch and Python version).
	scripts/build_horovod.sh $(PY)
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt scripts/get_promtool.sh \
    scripts/get_chromium.sh scripts/build_kube_apiserver.sh
	$(PY) -m pip install -q -r requirements-test.txt
	# The tier-1 Kubernetes tests' kube-apiserver and etcd: built from Debian's source once
	# per machine (~8-12 min on 2 cores; cached in ~/.cache/aigc-lifecycle/kube).
	scripts/build_kube_apiserver.sh || echo "kube-apiserver unavailable: the tier-1 tests will say so"
	# The browser tests' chromium + chromedriver: Debian's packages, where apt is allowed.
	scripts/get_chromium.sh || echo "chromium unavailable: the browser tests will say so"
	# promtool checks the alert rules: Debian's prometheus package, unpacked into .cache.
	scripts/get_promtool.sh || echo "promtool unavailable: the alert-rule tests will say so"
	touch $@

install: $(VENV)/.installed

$(VAR)/env.sh: $(VENV)/.installed tasks/localenv.py
	mkdir -p $(VAR)
	$(PY) -m tasks.localenv $(VAR) > $@

$(VAR)/airflow/.migrated: $(VAR)/env.sh
	$(ENV) mkdir -p $$AIRFLOW_HOME && airflow db migrate > $(VAR)/airflow/migrate.log 2>&1
	touch $@

run: $(VAR)/airflow/.migrated
	@echo "running aigc_lifecycle once on the bundled demo data (conf: $(CONF))"
	@$(ENV) $(PY) -m tasks.progress --conf '$(CONF)' --log $(VAR)/last-run.log \
	  || { tail -40 $(VAR)/last-run.log; exit 1; }
	@echo "Airflow's output: $(VAR)/last-run.log; each task's log: make up, then the run in the UI"
	@$(ENV) airflow dags list-runs aigc_lifecycle -o json 2>/dev/null | $(PY) -m tasks.summary
	@echo
	@echo "Look at the results:"
	@echo "  make up    # Airflow UI + REST on http://localhost:8080 (user admin, password printed),"
	@echo "             # MLflow UI on http://localhost:$(MLFLOW_PORT); 'make down' stops both"

test: $(VENV)/.test-installed
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.test-installed
	$(PY) -m ruff check .

up: $(VAR)/airflow/.migrated
	@$(ENV) $(PY) -m tasks.services up --mlflow-port $(MLFLOW_PORT)

down:
	@AIGC_HOME=$(VAR) $(PY) -m tasks.services down

clean:
	rm -rf $(VAR)
