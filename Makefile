# The two commands: `make run` (set-up + the whole pipeline) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.installed
BASE ?= main

# Stages call `python -m overfit...`: make sure that is the project's interpreter.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: setup run test params lint ui gate bench server server-stop screenshot lock clean

setup: $(INSTALLED)

# Re-install whenever the lock or the project's metadata changes.
$(INSTALLED): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

run: setup
	dvc repro
	@$(BIN)/python -m overfit.outputs

test: setup
	$(BIN)/python -m pytest

params: setup
	$(BIN)/python -m overfit.config

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

ui: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --workers 1 \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow.db

# The CI gate: compare reports/metrics.json with the base revision's (exit 1 on a regression).
gate: setup
	$(BIN)/python -m overfit.gate --base $(BASE)

# A shared tracking server: PostgreSQL + `mlflow server` with served artifacts, in .mlflow-server/.
server: setup
	$(BIN)/python -m overfit.server start

server-stop: setup
	$(BIN)/python -m overfit.server stop

# docs/mlflow-ui.png: the latest sweep in the MLflow UI (needs Chromium).
screenshot: setup
	$(BIN)/python scripts/ui_screenshot.py

# Speed against the article's model.fit; prints a table, writes benchmarks/results.json.
bench: setup
	$(BIN)/python benchmarks/bench.py

# Pin every package at the versions installed in .venv.
lock: setup
	@{ echo "# Exact versions of every package, installed by \`make\` (Linux x86_64, Python 3.11)."; \
	   echo "# Regenerate: make lock"; \
	   $(BIN)/python -m pip freeze --exclude-editable; } > requirements.lock

clean:
	rm -rf $(VENV)
