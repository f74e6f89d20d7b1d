"""Stages generate and split: the article's data (and circles), and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.datasets import make_circles, make_moons

from overfit import layout
from overfit.config import compose_params, parse_config
from overfit.core.data import (
    DataError,
    make_points,
    parse_csv_text,
    read_points,
    split_points,
    to_csv_text,
)
from overfit.stages import evaluate, prepare, train

from .conftest import ROOT


def test_generated_points_are_the_articles() -> None:
    x, y = make_moons(n_samples=100, noise=0.2, random_state=1)
    points = make_points("moons", 100, 0.2, 1)
    np.testing.assert_array_equal(points.x, x)
    np.testing.assert_array_equal(points.y, y)
    assert (points.x.dtype, points.y.dtype) == (np.float64, np.int64)


def test_circles_points_are_sklearns() -> None:
    x, y = make_circles(n_samples=100, noise=0.1, random_state=1)
    points = make_points("circles", 100, 0.1, 1, factor=0.8)
    np.testing.assert_array_equal(points.x, x)
    np.testing.assert_array_equal(points.y, y)
    assert (points.x.dtype, points.y.dtype) == (np.float64, np.int64)


def test_circles_preset_composes_and_its_training_rows_hold_both_classes() -> None:
    config = parse_config(yaml.safe_load(compose_params(ROOT, ["data=circles"])))
    data = config.data
    assert (data.name, data.n_samples, data.noise, data.random_state) == ("circles", 100, 0.1, 1)
    assert (data.n_train, data.factor) == (30, 0.8)
    assert (data.fresh_samples, data.fresh_random_state) == (10000, 10)
    assert config.registry.name == "overfit-circles"
    points = make_points(data.name, data.n_samples, data.noise, data.random_state, data.factor)
    train, _ = split_points(points, data.n_train)
    assert set(train.y.tolist()) == {0, 1}


def test_generate_writes_the_configured_data_set(project, entry) -> None:
    root, _ = project
    params = root / layout.PARAMS
    params.write_text(compose_params(ROOT, ["data=circles"]), encoding="utf-8")
    assert entry(prepare.main, root, "generate")[0] == 0
    points = read_points(root / layout.POINTS_CSV, expected_rows=100)
    x, y = make_circles(n_samples=100, noise=0.1, random_state=1, factor=0.8)
    np.testing.assert_array_equal(points.x, x)
    np.testing.assert_array_equal(points.y, y)
    fresh = read_points(root / layout.FRESH_CSV, expected_rows=10000)
    x, _ = make_circles(n_samples=10000, noise=0.1, random_state=10, factor=0.8)
    np.testing.assert_array_equal(fresh.x, x)


def test_csv_round_trip_is_exact() -> None:
    points = make_points("moons", 50, 0.3, 7)
    text = to_csv_text(points)
    assert text.splitlines()[0] == "x1,x2,label"
    back = parse_csv_text(text, "points.csv", expected_rows=50)
    np.testing.assert_array_equal(back.x, points.x)
    np.testing.assert_array_equal(back.y, points.y)


def test_split_is_first_rows_train() -> None:
    points = make_points("moons", 100, 0.2, 1)
    train, test = split_points(points, 30)
    assert (len(train), len(test)) == (30, 70)
    np.testing.assert_array_equal(train.x, points.x[:30])
    np.testing.assert_array_equal(test.y, points.y[30:])


GOOD = "x1,x2,label\n0.5,-0.25,1\n1.5,0.75,0\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x1,label\n0.5,1\n", "header must be x1,x2,label"),
        ("x1,x2,label\n0.5,abc,1\n", "line 2: non-numeric value"),
        ("x1,x2,label\n0.5,nan,1\n", "line 2: x1 and x2 must be finite"),
        ("x1,x2,label\n0.5,0.1,2\n", "line 2: label must be 0 or 1"),
        ("x1,x2,label\n0.5,0.1,1\n0.2,0.3", "truncated"),
        ("x1,x2,label\n0.5,0.1\n", "line 2: expected 3 values, got 2"),
        ("", "header must be x1,x2,label"),
    ],
)
def test_bad_csv_is_named(text: str, message: str) -> None:
    with pytest.raises(DataError, match=f"^bad.csv: .*{message}"):
        parse_csv_text(text, "bad.csv")


def test_wrong_row_count_is_named(tmp_path: Path) -> None:
    path = tmp_path / "points.csv"
    path.write_text(GOOD, encoding="utf-8")
    assert len(read_points(path, expected_rows=2)) == 2
    with pytest.raises(DataError, match=f"^{path}: expected 3 rows, got 2$"):
        read_points(path, expected_rows=3)


def test_split_stage_refuses_bad_raw_data_and_writes_nothing(project, entry) -> None:
    root, _ = project
    assert entry(prepare.main, root, "generate")[0] == 0
    points = root / "data/raw/points.csv"
    lines = points.read_text(encoding="utf-8").splitlines(keepends=True)
    points.write_text("".join(lines[:50]), encoding="utf-8")
    status, _, err = entry(prepare.main, root, "split")
    assert status == 1
    assert err.strip() == f"error: {points}: expected 100 rows, got 49"
    assert not (root / "data/split").exists()


CORRUPTIONS = {
    "missing column": lambda lines: ["x1,label"] + [",".join(r.split(",")[::2]) for r in lines[1:]],
    "non-numeric value": lambda lines: [*lines[:3], "0.5,abc,1", *lines[4:]],
    "NaN": lambda lines: [*lines[:3], "0.5,nan,1", *lines[4:]],
    "label outside {0, 1}": lambda lines: [*lines[:3], "0.5,0.5,3", *lines[4:]],
    "truncated": lambda lines: [*lines[:-1], lines[-1][:5]],
    "wrong number of rows": lambda lines: lines[:-2],
}
EXPECTED = {
    "missing column": "header must be x1,x2,label",
    "non-numeric value": "line 4: non-numeric value",
    "NaN": "line 4: x1 and x2 must be finite",
    "label outside {0, 1}": "line 4: label must be 0 or 1",
    "truncated": "truncated",
    "wrong number of rows": "expected 30 rows, got 28",
}


@pytest.mark.parametrize("problem", list(CORRUPTIONS))
def test_train_stage_refuses_bad_data_before_any_run(project, entry, problem: str) -> None:
    root, _ = project
    for stage in ("generate", "split"):
        assert entry(prepare.main, root, stage)[0] == 0
    train_csv = root / "data/split/train.csv"
    lines = train_csv.read_text(encoding="utf-8").splitlines()
    text = "\n".join(CORRUPTIONS[problem](lines))
    train_csv.write_text(text if problem == "truncated" else text + "\n", encoding="utf-8")
    status, _, err = entry(train.main, root)
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {train_csv}: ") and EXPECTED[problem] in lines[0]
    assert not (root / "models").exists()
    assert not (root / "mlflow.db").exists()


def test_evaluate_refuses_a_bad_fresh_sample_and_writes_nothing(
    shrunk_pipeline, tmp_path, entry
) -> None:
    root = tmp_path / "copy"
    shrunk_pipeline.copy_to(root)
    reports = {p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file()}
    fresh = root / "data/raw/fresh.csv"
    lines = fresh.read_text(encoding="utf-8").splitlines()
    fresh.write_text("\n".join([*lines[:5], "0.1,0.2,7", *lines[6:]]) + "\n", encoding="utf-8")
    status, _, err = entry(evaluate.main, root)
    assert status == 1
    assert err.strip() == f"error: {fresh}: line 6: label must be 0 or 1, got '7'"
    assert {p: p.read_bytes() for p in (root / "reports").rglob("*") if p.is_file()} == reports


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(project, entry, umask: int, mode: int) -> None:
    """What a teammate or a shared DVC cache may read is the umask's call, not the code's."""
    import os
    import stat

    root, _ = project
    previous = os.umask(umask)
    try:
        assert entry(prepare.main, root, "generate")[0] == 0
    finally:
        os.umask(previous)
    for path in (root / "data/raw").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
