# The two commands: `make run` (set-up + the whole pipeline) and `make test`.

# The CPython versions every pin in requirements.lock has wheels for; .venv is made with the
# first one on PATH, or with PYTHON=/path/to/python.
SUPPORTED := 3.11 3.12 3.13
ifndef PYTHON
PYTHON := $(firstword $(foreach v,$(SUPPORTED),$(shell python$(v) -c '' 2>/dev/null && command -v python$(v))))
endif
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
INSTALLED := $(VENV)/.installed
BASE ?= main

# Stages call `python -m overfit...`: make sure that is the project's interpreter.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true

.PHONY: setup venv run test params lint ui gate bench server server-stop promote prune serve predict screenshot lock clean

setup: $(INSTALLED)

# A venv cannot move: its scripts and the editable install name the folder it was made in. One
# made in another folder (the project moved or copied with it) is made again here; a link to a
# venv kept elsewhere is left as it is.
MADE_IN := $(shell test -L $(VENV) || cat $(INSTALLED) 2>/dev/null)
ifneq ($(MADE_IN),)
ifneq ($(MADE_IN),$(CURDIR))
$(info $(VENV) was made in $(MADE_IN): making it again in $(CURDIR))
$(shell rm -rf $(VENV))
endif
endif

# Re-install whenever the lock or the project's metadata changes.
$(INSTALLED): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(MAKE) --no-print-directory venv
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@echo "$(CURDIR)" > $@

venv:
	@test -n "$(PYTHON)" || { echo "error: no Python $(SUPPORTED) on PATH; install one, or make PYTHON=/path/to/python3.X"; exit 1; }
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v in "$(SUPPORTED)".split() else "error: $(PYTHON) is Python " + v + "; supported: $(SUPPORTED)")'
	@echo "Creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)

run: setup
	dvc repro
	@$(BIN)/python -m overfit.commands.outputs

test: setup
	$(BIN)/python -m pytest

params: setup
	$(BIN)/python -m overfit.commands.params

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

ui: setup
	@echo "The sweep on MLflow's Model training view (the experiment's plain address opens GenAI):"
	@$(BIN)/python scripts/ui_screenshot.py --store sqlite:///$(CURDIR)/mlflow.db \
		--link http://127.0.0.1:5000 || true
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --host 127.0.0.1 --port 5000 --workers 1 \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow.db

# The CI gate: compare reports/metrics.json with the base revision's (exit 1 on a regression).
gate: setup
	$(BIN)/python -m overfit.commands.gate --base $(BASE)

# A shared tracking server: PostgreSQL + `mlflow server` with served artifacts, in .mlflow-server/.
server: setup
	$(BIN)/python -m overfit.commands.server start

server-stop: setup
	$(BIN)/python -m overfit.commands.server stop

# The registered candidate becomes champion if the gate's rules hold against the champion
# (python -m overfit.commands.promote --rollback: the champion back to the version it replaced).
promote: setup
	$(BIN)/python -m overfit.commands.promote

# Old sweeps out of the tracking store (runs, logged models, artifacts), keeping the KEEP newest,
# the one reports/sweep.json records and every registered version's: make prune KEEP=5
KEEP ?= 5
prune: setup
	$(BIN)/python -m overfit.commands.prune --keep $(KEEP)

# The champion (registry.name@champion) as a REST API on 127.0.0.1:<registry.port>, by
# `mlflow models serve`: POST {"dataframe_split": {"columns": ["x1", "x2"], "data": [[...]]}}.
serve: setup
	$(BIN)/python -m overfit.commands.serve

# The champion's class-1 probabilities for a CSV with columns x1, x2, as JSON, by
# `mlflow models predict`: make predict IN=data/split/test.csv OUT=predictions.json
predict: setup
	$(if $(and $(IN),$(OUT)),,$(error error: IN and OUT are required: make predict IN=x1x2.csv OUT=out.json))
	$(BIN)/python -m overfit.commands.serve predict "$(IN)" "$(OUT)"

# docs/mlflow-ui.png: the latest sweep in the MLflow UI (needs Chromium).
screenshot: setup
	$(BIN)/python scripts/ui_screenshot.py

# Speed against the article's model.fit; prints a table, writes benchmarks/results.json.
bench: setup
	$(BIN)/python benchmarks/bench.py

# Pin every package at the versions installed in .venv.
lock: setup
	@{ echo "# Exact versions of every package, installed by \`make\` (Linux x86_64; Python $(SUPPORTED))."; \
	   echo "# Regenerate: make lock"; \
	   $(BIN)/python -m pip freeze --exclude-editable; } > requirements.lock

clean:
	rm -rf $(VENV)
