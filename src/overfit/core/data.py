"""The data sets, two classes in the plane: two moons (the article's, sklearn's make_moons) or two
circles (sklearn's make_circles), as `data.name` says. Generated, split as the article does,
and kept as CSV files that carry their schema (`x1,x2,label`); reading one checks it and names
the file and line of any problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from overfit import layout
from overfit.artifacts import write_text
from overfit.config import DataConfig

HEADER = ("x1", "x2", "label")
FEATURES = HEADER[:2]  # what a model takes, by name


class DataError(ValueError):
    """A data file that is not what the pipeline wrote; the message names the file."""


@dataclass(frozen=True)
class Points:
    """Inputs x (n, 2) float64 and labels y (n,) int64 in {0, 1}."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> Points:
        return Points(self.x[:n], self.y[:n])

    def tail(self, n: int) -> Points:
        return Points(self.x[n:], self.y[n:])


# --- pure functions --------------------------------------------------------------------------


def make_points(
    name: str, n_samples: int, noise: float, random_state: int, factor: float = 0.8
) -> Points:
    """The named data set's generator, rows in the order it returns them: sklearn's make_moons
    (the article's) or make_circles (`factor`: the inner circle's scale; circles only)."""
    from sklearn.datasets import make_circles, make_moons

    if name == "moons":
        x, y = make_moons(n_samples=n_samples, noise=noise, random_state=random_state)
    elif name == "circles":
        x, y = make_circles(
            n_samples=n_samples, noise=noise, random_state=random_state, factor=factor
        )
    else:
        raise ValueError(f"unknown data set {name!r}: moons or circles")
    return Points(x.astype(np.float64), y.astype(np.int64))


def make_moons_points(n_samples: int, noise: float, random_state: int) -> Points:
    """The article's generator: sklearn's make_moons, rows in the order it returns them."""
    return make_points("moons", n_samples, noise, random_state)


def split_points(points: Points, n_train: int) -> tuple[Points, Points]:
    """The article's split: the first n_train rows train, the rest test."""
    return points.head(n_train), points.tail(n_train)


def drawn_split(data: DataConfig) -> tuple[Points, Points]:
    """The training and test rows the data settings draw, as the generate and split stages
    write them."""
    points = make_points(data.name, data.n_samples, data.noise, data.random_state, data.factor)
    return split_points(points, data.n_train)


def to_csv_text(points: Points) -> str:
    lines = [",".join(HEADER)]
    # repr keeps every bit of a float64, so a reader gets back exactly what was generated.
    lines += [
        f"{a!r},{b!r},{int(c)}" for (a, b), c in zip(points.x.tolist(), points.y, strict=True)
    ]
    return "\n".join(lines) + "\n"


def parse_csv_text(text: str, name: str, expected_rows: int | None = None) -> Points:
    """Parse and check a points CSV; any problem is a DataError naming the file and line."""
    lines = text.splitlines()
    if not lines or tuple(lines[0].split(",")) != HEADER:
        got = lines[0] if lines else "an empty file"
        raise DataError(f"{name}: header must be {','.join(HEADER)}, got {got!r}")
    if not text.endswith("\n"):
        raise DataError(f"{name}: truncated (the last line has no line ending)")
    xs, ys = [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != len(HEADER):
            raise DataError(f"{name}: line {number}: expected 3 values, got {len(fields)}")
        try:
            a, b, label = float(fields[0]), float(fields[1]), float(fields[2])
        except ValueError:
            raise DataError(f"{name}: line {number}: non-numeric value in {line!r}") from None
        if not (math.isfinite(a) and math.isfinite(b)):
            raise DataError(f"{name}: line {number}: x1 and x2 must be finite, got {line!r}")
        if label not in (0.0, 1.0):
            raise DataError(f"{name}: line {number}: label must be 0 or 1, got {fields[2]!r}")
        xs.append((a, b))
        ys.append(int(label))
    if expected_rows is not None and len(ys) != expected_rows:
        raise DataError(f"{name}: expected {expected_rows} rows, got {len(ys)}")
    return Points(np.array(xs, dtype=np.float64).reshape(-1, 2), np.array(ys, dtype=np.int64))


# --- I/O at the edges ------------------------------------------------------------------------


def write_points(path: Path, points: Points) -> None:
    write_text(path, to_csv_text(points))


def read_points(path: Path, expected_rows: int | None = None) -> Points:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text file") from None
    return parse_csv_text(text, str(path), expected_rows)


def load_train_test(root: Path, data: DataConfig) -> tuple[Points, Points]:
    """The split's train and test points, each checked against the configured sizes."""
    train = read_points(root / layout.TRAIN_CSV, expected_rows=data.n_train)
    test = read_points(root / layout.TEST_CSV, expected_rows=data.n_samples - data.n_train)
    return train, test


def load_fresh(root: Path, data: DataConfig) -> Points:
    """The large fresh draw that estimates real-world accuracy."""
    return read_points(root / layout.FRESH_CSV, expected_rows=data.fresh_samples)
