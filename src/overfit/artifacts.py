"""The files stages hand each other, as typed readers and writers; every write is atomic.

A stage reads another stage's output only through this module, so a format is defined once:

- a job's `result.json` (`JobResult`) and per-epoch `history.csv`;
- the sweep's record `reports/sweep.json` (`SweepRecord`);
- evaluate's `reports/metrics.json` (`Headline`: the figures DVC shows and the gate guards),
  `reports/configs.json` (`ConfigSummary` per configuration), `reports/evaluation.npz` (arrays
  for the figures) and the CSV tables behind the DVC plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from overfit import layout

# Per-epoch curves, as MLflow and the reports name them, in history.csv's column order.
CURVES = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


T = TypeVar("T")


class ArtifactError(RuntimeError):
    """A file another stage wrote is missing or not what it should be; the message names it."""


# --- atomic writes ---------------------------------------------------------------------------


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.

    The file gets the mode any new file gets here (0644 under umask 022), not mkstemp's 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_bytes(data: Any) -> bytes:
    """JSON as the standard has it (ValueError on a NaN or an infinity), indented."""
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8")


def write_json(path: Path, data: Any) -> None:
    """JSON as the standard has it: a NaN or an infinity is an error, never written."""
    try:
        text = _json_bytes(data)
    except ValueError:
        raise ArtifactError(f"{path}: not written, a value is NaN or infinite") from None
    write_bytes(path, text)


def read_record(cls: type[T], path: Path, missing: str, kind: str) -> T:
    """A dataclass from a JSON file: ArtifactError if the file is missing (`missing` says what
    to do), is not JSON, or is not a `kind`."""
    raw = read_json(path, missing)
    try:
        return cls(**raw)
    except TypeError:
        raise ArtifactError(f"{path}: not {kind}") from None


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None


# --- a job's result --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobResult:
    """What one job (a configuration, every seed) trained: result.json, written last.

    A pure function of code, params and data (no run id, no time): the run that logged it is
    tagged with the file's SHA-256 (`result_digest`)."""

    run: str
    penalty: dict[str, Any]
    # The remedy the configuration applies: {"kind": family, "setting": value} (remedies.py).
    remedy: dict[str, Any]
    seeds: list[int]
    per_seed: dict[str, dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]
    # Cross-validation inside the training rows: per fold (fold, seed, rows, acc, loss), and
    # the mean and spread over folds of cv_acc and cv_loss; None without cross-validation.
    cv: dict[str, Any] | None
    # Per seed: the SHA-256 of the saved model's weights, checked when evaluate loads it.
    weights_sha256: dict[str, str]
    # Early stopping: what it watched, each fold's and seed's epochs and best epoch, and the
    # epochs the final models trained (watch cv); None without it.
    stopping: dict[str, Any] | None = None


def weights_digest(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 of a model's weights (shapes and float32 bytes, in Keras' order): recorded at
    training, checked when the model is loaded again."""
    digest = hashlib.sha256()
    for array in weights:
        array = np.ascontiguousarray(array, dtype=np.float32)
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_result(folder: Path, result: JobResult) -> None:
    write_json(folder / layout.RESULT_FILE, dataclasses.asdict(result))


def result_digest(result: JobResult) -> str:
    """The SHA-256 of the result.json `write_result` writes for `result`."""
    return hashlib.sha256(_json_bytes(dataclasses.asdict(result))).hexdigest()


def file_digest(*paths: Path) -> str:
    """The SHA-256 of the files' bytes, one after the other; ArtifactError if one cannot be
    read."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            digest.update(path.read_bytes())
        except OSError as error:
            raise ArtifactError(f"{path}: cannot be read ({error.strerror})") from None
    return digest.hexdigest()


def read_result(folder: Path) -> JobResult:
    missing = f"the job for {folder.name} did not finish"
    return read_record(JobResult, folder / layout.RESULT_FILE, missing, "a job result")


# --- per-epoch histories ---------------------------------------------------------------------


def write_history(folder: Path, seeds: Sequence[int], curves: Sequence[Mapping[str, Any]]) -> None:
    """history.csv: every epoch of every seed (`curves[i][name]` is seed i's curve)."""
    rows = ["seed,epoch," + ",".join(CURVES)]
    for seed, per_seed in zip(seeds, curves, strict=True):
        columns = np.stack([per_seed[name] for name in CURVES], axis=1)
        rows += [
            f"{seed},{epoch}," + ",".join(f"{v:.7g}" for v in values)
            for epoch, values in enumerate(columns.tolist(), start=1)
        ]
    write_text(folder / layout.HISTORY_FILE, "\n".join(rows) + "\n")


def read_accuracy_history(folder: Path) -> np.ndarray:
    """Per-seed train and test accuracy per epoch: shape [seeds, epochs, 2] (NaN-padded)."""
    path = folder / layout.HISTORY_FILE
    try:
        header = path.read_text(encoding="utf-8").split("\n", 1)[0].split(",")
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        columns = [header.index(c) for c in ("seed", "train_accuracy", "test_accuracy")]
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{path}: not a readable history ({error})") from None
    table = table[:, columns]
    return nan_padded([table[table[:, 0] == s][:, 1:] for s in np.unique(table[:, 0])])


def nan_padded(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """Per-seed curves stacked along a first axis; a seed that early stopping stopped has
    fewer epochs, so NaN follows its last."""
    stacked = np.full(
        (len(per_seed), max(len(c) for c in per_seed), *per_seed[0].shape[1:]), np.nan
    )
    for i, curve in enumerate(per_seed):
        stacked[i, : len(curve)] = curve
    return stacked


# --- the sweep's record ----------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRecord:
    """reports/sweep.json: the sweep's name and, per configuration it trained, the SHA-256 of
    its result.json. No run id and no time: the sweep's MLflow runs are found by their tags
    (the parent's `overfit.sweep_sha256` is `digest()`, each child's `overfit.result_sha256`
    its entry here), and evaluate checks each models/<run>/ against its entry."""

    name: str
    results: dict[str, str]

    def digest(self) -> str:
        """The SHA-256 of what the sweep trained: its configurations and their results."""
        return hashlib.sha256(_json_bytes(dict(sorted(self.results.items())))).hexdigest()


def write_sweep(root: Path, record: SweepRecord) -> None:
    write_json(root / layout.SWEEP_RECORD, dataclasses.asdict(record))


def read_sweep(root: Path) -> SweepRecord:
    path = root / layout.SWEEP_RECORD
    return read_record(SweepRecord, path, "run the train stage first", "a sweep record")


# --- evaluate's reports ----------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Mean and standard deviation over seeds."""

    mean: float
    std: float


@dataclass(frozen=True)
class ConfigSummary:
    """One configuration in reports/configs.json: every measure's spread over seeds."""

    kind: str
    strength: float
    measures: dict[str, Spread]

    def mean(self, measure: str) -> float:
        return self.measures[measure].mean

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "strength": self.strength} | {
            name: dataclasses.asdict(spread) for name, spread in self.measures.items()
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ConfigSummary:
        measures = {k: Spread(**v) for k, v in raw.items() if k not in ("kind", "strength")}
        return cls(raw["kind"], float(raw["strength"]), measures)


@dataclass(frozen=True)
class Baseline:
    """The unregularized configuration's mean train and test accuracy: how much it overfits."""

    train: float
    test: float


@dataclass(frozen=True)
class Selected:
    """The configuration the selection rule chose, and its figures: mean held-out accuracy in
    cross-validation (None without it), then test and fresh-sample accuracy, read after."""

    run: str
    cv: float | None
    test: float
    fresh: float


@dataclass(frozen=True)
class Headline:
    """reports/metrics.json: the few figures `dvc metrics show` prints and the gate guards.

    The unregularized baseline and the selected configuration; every figure is a mean
    accuracy (over seeds; cv over folds). Kept to what fits a 120-column terminal (119): the
    rule, the baseline's fresh accuracy and the rest are in configs.json.
    """

    baseline: Baseline
    selected: Selected

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": dataclasses.asdict(self.baseline),
            "selected": dataclasses.asdict(self.selected),
        }


@dataclass(frozen=True)
class Evaluation:
    """Everything evaluate reports: per configuration; the selection (`selected` by `rule`;
    side by side, `cv_choice`, what cross-validation picks, None without it, and
    `test_choice`, what the highest test accuracy picks); the headline (None without a
    baseline run to compare with)."""

    configs: dict[str, ConfigSummary]
    baseline_run: str | None
    headline: Headline | None
    rule: str
    selected: str
    cv_choice: str | None
    test_choice: str


def write_evaluation(root: Path, evaluation: Evaluation) -> None:
    configs = {
        "baseline": evaluation.baseline_run,
        "selected": evaluation.selected,
        "rule": evaluation.rule,
        "cv_choice": evaluation.cv_choice,
        "test_choice": evaluation.test_choice,
        "configs": {n: c.to_json() for n, c in sorted(evaluation.configs.items())},
    }
    write_json(root / layout.CONFIGS, configs)
    write_json(root / layout.METRICS, evaluation.headline.to_json() if evaluation.headline else {})


def read_evaluation(root: Path) -> Evaluation:
    raw = read_json(root / layout.CONFIGS, "run the evaluate stage first")
    headline = parse_headline(read_json(root / layout.METRICS, "run the evaluate stage first"))
    try:
        configs = {n: ConfigSummary.from_json(c) for n, c in raw["configs"].items()}
        choices = [raw[k] for k in ("rule", "selected", "cv_choice", "test_choice")]
        return Evaluation(configs, raw["baseline"], headline, *choices)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ArtifactError(f"{root / layout.CONFIGS}: not a configurations report") from None


def parse_headline(raw: Any) -> Headline | None:
    """metrics.json's content as a Headline (None when empty); KeyError/TypeError if malformed."""
    if raw == {}:
        return None
    return Headline(baseline=Baseline(**raw["baseline"]), selected=Selected(**raw["selected"]))


# --- the registered model ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRecord:
    """reports/model.json: the model the register stage registered (or found already
    registered): which configuration and seed, the rule that chose it, its figures (the
    configuration's means; `seed_test` is this seed's own test accuracy) and its content digest.
    The version number is the store's, so it lives in the store only."""

    name: str
    run: str
    seed: int
    rule: str
    cv: float | None
    test: float
    fresh: float
    seed_test: float
    # What the model is made of (the .keras file and the model code): its version in the
    # registry is the one tagged overfit.model_sha256 with this value.
    model_sha256: str


def write_model_record(root: Path, record: ModelRecord) -> None:
    write_json(root / layout.MODEL_RECORD, dataclasses.asdict(record))


def read_model_record(root: Path) -> ModelRecord:
    missing = "run the register stage first (dvc repro)"
    return read_record(ModelRecord, root / layout.MODEL_RECORD, missing, "a model record")


def write_arrays(root: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """reports/evaluation.npz: decision-boundary grids and hidden kernels, for the figures."""
    path = root / layout.EVALUATION
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_arrays(root: Path) -> Mapping[str, np.ndarray]:
    """evaluation.npz, with pickling off: nothing read from disk is unpickled."""
    path = root / layout.EVALUATION
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; run the evaluate stage first")
    return np.load(path, allow_pickle=False)


# --- the tables behind the DVC plots ---------------------------------------------------------

STRENGTH_COLUMNS = (
    "run",
    "kind",
    "strength",
    "cv_acc",
    "test_acc",
    "fresh_acc",
    "train_acc",
    "gap",
)
CURVE_COLUMNS = ("train_accuracy", "test_accuracy", "train_std", "test_std")


def write_strength_table(root: Path, configs: Mapping[str, ConfigSummary]) -> None:
    """Accuracy against penalty strength, one row per regularized configuration (cv_acc empty
    without cross-validation)."""
    rows = [",".join(STRENGTH_COLUMNS)]
    for name, c in sorted(configs.items(), key=lambda kv: (kv[1].kind, kv[1].strength)):
        values = [c.mean(k) if k in c.measures else "" for k in STRENGTH_COLUMNS[3:]]
        rows.append(f"{name},{c.kind},{c.strength!r}," + ",".join(map(str, values)))
    write_text(root / layout.STRENGTH_TABLE, "\n".join(rows) + "\n")


def write_curves_table(root: Path, curves: Mapping[str, np.ndarray]) -> None:
    """Per-epoch accuracy by label (baseline, selected): [epochs, 4], CURVE_COLUMNS' columns."""
    rows = ["epoch,run," + ",".join(CURVE_COLUMNS)]
    for label, table in curves.items():
        rows += [
            f"{epoch},{label}," + ",".join(f"{v:.6g}" for v in values)
            for epoch, values in enumerate(table.tolist(), start=1)
        ]
    write_text(root / layout.CURVES_TABLE, "\n".join(rows) + "\n")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; run the evaluate stage first") from None
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def read_curves_table(root: Path) -> dict[str, np.ndarray]:
    by_label: dict[str, list[list[float]]] = {}
    for row in _csv_rows(root / layout.CURVES_TABLE):
        by_label.setdefault(row["run"], []).append([float(row[k]) for k in CURVE_COLUMNS])
    return {label: np.array(rows) for label, rows in by_label.items()}
