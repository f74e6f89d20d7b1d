"""The files the train stage hands on, as typed readers and writers, and the atomic writes
every file of the pipeline goes through (reports.py holds the later stages' reports).

A stage reads another stage's output only through this module or reports.py, so a format is
defined once:

- a job's `result.json` (`JobResult`) and per-epoch `history.csv`;
- the sweep's record `reports/sweep.json` (`SweepRecord`).

The JSON formats are pydantic models, checked whenever one is built or read: every figure is a
finite number in its range (accuracies in [0, 1], losses >= 0, ...), every key is there and no
other, and every name a report refers to exists. A file that breaks a rule is an ArtifactError
of one line: the file, the key, what is allowed and what was found.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import (
    StrictInt,
    StrictStr,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from overfit import layout
from overfit.validation import (
    STRICT,
    Accuracy,
    ArtifactError,
    Figures,
    Loss,
    Schema,
    Sha256,
    Spreads,
    Strength,
    refused,
)

# Per-epoch curves, as MLflow and the reports name them, in history.csv's column order.
CURVES = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")

S = TypeVar("S", bound=Schema)


# --- atomic writes ---------------------------------------------------------------------------


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.

    The file gets the mode any new file gets here (0644 under umask 022), not mkstemp's 0600.
    A failure (a read-only folder, a full disk) is an OSError naming `path`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from None
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


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; ArtifactError if it is missing (`what` says what to do) or is
    not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; {what}") from None
    except UnicodeDecodeError as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None
    return loads(text, str(path))


def loads(text: str, name: str) -> Any:
    """JSON text (a file's, or a revision's copy of it: `name` says which) parsed."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{name}: not valid JSON ({error})") from None


def read_record(cls: type[S], path: Path, missing: str) -> S:
    """A schema's file: ArtifactError if it is missing (`missing` says what to do), is not
    JSON, or breaks the schema."""
    return cls.parse(read_json(path, missing), str(path))


# --- a job's result --------------------------------------------------------------------------


@with_config(STRICT)
class PenaltyRecord(TypedDict):
    """The configuration's weight penalty (params.yaml's penalty section)."""

    kind: StrictStr
    strength: Strength
    apply_to: StrictStr


@with_config(STRICT)
class RemedyRecord(TypedDict):
    """The remedy a configuration applies: its family and setting (remedies.py)."""

    kind: StrictStr
    setting: Strength


@with_config(STRICT)
class FoldScore(TypedDict):
    """One cross-validation fold: the seed its model started from, its held-out rows' count,
    accuracy and cross-entropy."""

    fold: StrictInt
    seed: StrictInt
    rows: StrictInt
    acc: Accuracy
    loss: Loss


@with_config(STRICT)
class CrossValidation(TypedDict):
    """Per fold, then the mean and spread over folds of cv_acc and cv_loss."""

    per_fold: list[FoldScore]
    mean: Figures
    std: Spreads


class JobResult(Schema):
    """What one job (a configuration, every seed) trained: result.json, written last.

    A pure function of code, params and data (no run id, no time): the run that logged it is
    tagged with the file's SHA-256 (`result_digest`)."""

    run: StrictStr
    penalty: PenaltyRecord
    remedy: RemedyRecord
    seeds: list[StrictInt]
    # Per seed, then mean and spread over seeds: train_acc, test_acc, train_loss, ...
    per_seed: dict[str, Figures]
    mean: Figures
    std: Spreads
    # Cross-validation inside the training rows; None without it.
    cv: CrossValidation | None
    # Per seed: the SHA-256 of the saved model's weights, checked when evaluate loads it.
    weights_sha256: dict[str, Sha256]
    # Early stopping: what it watched, each fold's and seed's epochs and best epoch, and the
    # epochs the final models trained (watch cv); None without it.
    stopping: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_entry_per_seed(self) -> JobResult:
        seeds = sorted(str(seed) for seed in self.seeds)
        if not seeds:
            raise refused("a list of at least one seed", self.seeds, "seeds")
        for key in ("per_seed", "weights_sha256"):
            if sorted(getattr(self, key)) != seeds:
                allowed = f"an object with one entry per seed ({', '.join(seeds)})"
                raise refused(allowed, sorted(getattr(self, key)), key)
        return self


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
    write_json(folder / layout.RESULT_FILE, result.to_json())


def result_digest(result: JobResult) -> str:
    """The SHA-256 of the result.json `write_result` writes for `result`."""
    return hashlib.sha256(_json_bytes(result.to_json())).hexdigest()


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
    return read_record(JobResult, folder / layout.RESULT_FILE, missing)


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


class SweepRecord(Schema):
    """reports/sweep.json: the sweep's name and, per configuration it trained, the SHA-256 of
    its result.json. No run id and no time: the sweep's MLflow runs are found by their tags
    (the parent's `overfit.sweep_sha256` is `digest()`, each child's `overfit.result_sha256`
    its entry here), and evaluate checks each models/<run>/ against its entry."""

    name: StrictStr
    results: dict[str, Sha256]

    def digest(self) -> str:
        """The SHA-256 of what the sweep trained: its configurations and their results."""
        return hashlib.sha256(_json_bytes(dict(sorted(self.results.items())))).hexdigest()


def clear_models(root: Path) -> None:
    """Remove what an earlier sweep left in models/. DVC leaves the train stage's outputs in
    place (`persist`), so that it never deletes them under a sweep still running: the stage
    clears them itself, once it holds the project lock."""
    models = root / layout.MODELS_DIR
    if not models.is_dir():
        return
    for entry in models.iterdir():  # models/ itself stays: it may be a mount or a link
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def write_sweep(root: Path, record: SweepRecord) -> None:
    write_json(root / layout.SWEEP_RECORD, record.to_json())


def read_sweep(root: Path) -> SweepRecord:
    return read_record(SweepRecord, root / layout.SWEEP_RECORD, "run the train stage first")
