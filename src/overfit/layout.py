"""Where every file lives: each path the pipeline reads or writes, relative to the project root.

Nothing else in the package spells a path. dvc.yaml names the same paths (a test keeps the two
in step), since DVC reads it without running Python.
"""

from __future__ import annotations

import os
from pathlib import Path

# The configuration.
PARAMS = Path("params.yaml")
CONF_DIR = Path("conf")
DVC_YAML = Path("dvc.yaml")
DVC_LOCK = Path("dvc.lock")

# Stages generate and split.
RAW_DIR = Path("data/raw")
POINTS_CSV = RAW_DIR / "points.csv"  # data.name's points (moons or circles)
FRESH_CSV = RAW_DIR / "fresh.csv"
SPLIT_DIR = Path("data/split")
TRAIN_CSV = SPLIT_DIR / "train.csv"
TEST_CSV = SPLIT_DIR / "test.csv"

# Held by a pipeline process while it runs: one pipeline per project folder at a time.
PIPELINE_LOCK = Path(".overfit.lock")
# Held by a promotion or a rollback: one registry move at a time from this folder.
REGISTRY_LOCK = Path(".overfit-registry.lock")

# Stage train: one folder per configuration, plus the sweep's record. The record is kept out of
# DVC's cache (see dvc.yaml), so DVC never restores the stage from its run cache: a train stage
# that did not finish always runs again, and so finds the runs a killed process left RUNNING.
MODELS_DIR = Path("models")
SWEEP_RECORD = Path("reports/sweep.json")
# A job works in models/.partial/<run>/ and is renamed into place only when complete.
PARTIAL_DIR = MODELS_DIR / ".partial"
# params.yaml as the sweep read it, once: every job is composed from this copy.
PARAMS_SNAPSHOT = PARTIAL_DIR / "params.yaml"
RESULT_FILE = "result.json"
HISTORY_FILE = "history.csv"
LEARNING_CURVE_FILE = "learning_curve.png"
# The first seed's model in MLflow's Keras flavor, staged until it is logged (not kept).
MLFLOW_MODEL_DIR = "mlflow_model"
# Where Hydra keeps a job's resolved configuration and overrides.
HYDRA_DIR = ".hydra"
JOB_CONFIG = f"{HYDRA_DIR}/config.yaml"
JOB_OVERRIDES = f"{HYDRA_DIR}/overrides.yaml"

# Stages evaluate and plot.
REPORTS_DIR = Path("reports")
# Stage study: the sweep on other draws of the data (in git: small, and a diff shows its change).
STUDY = REPORTS_DIR / "study.json"
# A study run by a Hydra launcher: params.yaml as the stage read it, and each job's group of
# draws in .study/group_<k>/, merged into study.json and removed.
STUDY_PARTS = REPORTS_DIR / ".study"
STUDY_SNAPSHOT = STUDY_PARTS / "params.yaml"
STUDY_CONFIGS = STUDY_PARTS / "configs.json"  # the sweep's configurations, as the stage planned
STUDY_GROUP_FILE = "draws.json"
METRICS = REPORTS_DIR / "metrics.json"
CONFIGS = REPORTS_DIR / "configs.json"
EVALUATION = REPORTS_DIR / "evaluation.npz"
PLOTS_DIR = REPORTS_DIR / "plots"
STRENGTH_TABLE = PLOTS_DIR / "accuracy_vs_strength.csv"
CURVES_TABLE = PLOTS_DIR / "learning_curves.csv"
FIGURES_DIR = REPORTS_DIR / "figures"
SUMMARY = REPORTS_DIR / "summary.md"
GATE_REPORT = REPORTS_DIR / "gate.md"
# What MLflow runs to load the registered model (models from code; no module imports it).
CLASSIFIER_CODE = Path("src/overfit/tracking/classifier.py")


# The register stage's record of the model version it registered (name, version, run, figures).
MODEL_RECORD = REPORTS_DIR / "model.json"

# The embedded MLflow store and the tracking server's state.
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
# Artifact names inside MLflow runs.
SWEEP_TABLE_ARTIFACT = "sweep_results.md"
SERVER_DIR = Path(".mlflow-server")


def study_group_dir(root: Path, group: int) -> Path:
    return root / STUDY_PARTS / f"group_{group}"


def run_dir(root: Path, name: str) -> Path:
    """models/<run>/: one configuration's models, history, result and config."""
    return root / MODELS_DIR / name


def partial_run_dir(root: Path, name: str) -> Path:
    return root / PARTIAL_DIR / name


MODEL_FILES = "seed_*.keras"
# The members of a .keras file (a zip) that hold its save date and its configuration.
KERAS_METADATA = "metadata.json"
KERAS_CONFIG = "config.json"


def model_file(folder: Path, seed: int) -> Path:
    return folder / MODEL_FILES.replace("*", str(seed))


def figure_file(root: Path, name: str) -> Path:
    return root / FIGURES_DIR / f"{name}.png"


def store_lock(database: Path) -> Path:
    """The lock file beside a SQLite store, taken while its schema is created."""
    return database.with_name(database.name + ".lock")


DRAFT_SUFFIX = ".new"


def store_draft(database: Path, pid: int) -> Path:
    """Where a new SQLite store is created, beside its final name, before one rename."""
    return database.with_name(f".{database.name}.{pid}{DRAFT_SUFFIX}")


def store_root(root: Path) -> Path:
    """Where the embedded MLflow store lives: the project root.

    A queued DVC experiment runs in a temporary copy of the project; DVC then names the real
    project in $DVC_ROOT, and its runs go to the project's store, not to the copy's.
    """
    return Path(os.environ.get("DVC_ROOT") or root).resolve()


def mlflow_db(root: Path) -> Path:
    return store_root(root) / MLFLOW_DB


def mlflow_artifacts(root: Path) -> Path:
    return store_root(root) / MLFLOW_ARTIFACTS
