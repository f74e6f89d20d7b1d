"""I/O failures are one line naming the path and the OS's reason, never a traceback or an
abort: a store or a folder this process cannot write, a full disk, a folder where a file goes,
a tampered evaluation file. Real stage processes on copies of the shrunk pipeline. Root ignores
file modes, so the processes run without CAP_DAC_OVERRIDE (setpriv), as any other user would;
a full disk is a small tmpfs, mounted in a user namespace of the process's own (unshare). The
stages that need neither run in this process."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from overfit.stages import plot, prepare

from .test_reliability import runs_by_status


def unprivileged() -> list[str]:
    """The command prefix under which file modes hold, whoever runs the suite."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    ("module", "status"),
    [("overfit.stages.train", 1), ("overfit.stages.register", 1), ("overfit.commands.promote", 2)],
)
def test_a_read_only_store_is_refused_before_any_work(
    tmp_path: Path, shrunk_pipeline, module: str, status: int
) -> None:
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    (root / "mlflow.db").chmod(0o444)
    before = files_of(root / "models") | files_of(root / "reports")

    result = run(*unprivileged(), sys.executable, "-m", module, check=False)

    assert result.returncode == status, result.stdout + result.stderr
    assert one_error(result.stderr) == (
        f"error: {root / 'mlflow.db'}: cannot write to the MLflow store "
        "(attempt to write a readonly database)"
    )
    assert files_of(root / "models") | files_of(root / "reports") == before


def test_a_read_only_reports_folder_is_one_line_and_nothing_half_written(
    tmp_path: Path, shrunk_pipeline
) -> None:
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    reports = root / "reports"
    before = files_of(reports)
    reports.chmod(0o555)
    try:
        result = run(*unprivileged(), sys.executable, "-m", "overfit.stages.evaluate", check=False)
    finally:
        reports.chmod(0o755)
    assert result.returncode == 1, result.stdout + result.stderr
    line = one_error(result.stderr)
    assert line.startswith(f"error: {reports}/") and line.endswith(": Permission denied"), line
    assert files_of(reports) == before


def test_a_full_disk_ends_the_sweep_failed_in_one_line(tmp_path: Path, shrunk_pipeline) -> None:
    """models/ on a 300 kB tmpfs: the first job's files do not fit."""
    if subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("this kernel gives no user namespaces: no tmpfs can be mounted here")
    root = tmp_path / "project"
    run = shrunk_pipeline.copy_to(root)
    before = set(runs_by_status(root))
    train = f"{sys.executable} -m overfit.stages.train"
    mount = "mount -t tmpfs -o size=300k tmpfs models"
    result = run("unshare", "-r", "-m", "sh", "-c", f"{mount} && exec {train}", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    line = one_error(result.stderr)
    assert line.startswith(f"error: {root / 'models/.partial'}/"), line
    assert line.endswith(": No space left on device"), line
    assert set(runs_by_status(root)[r] for r in set(runs_by_status(root)) - before) >= {"FAILED"}
    assert "RUNNING" not in runs_by_status(root).values()
    assert not (root / "reports/sweep.json").exists()


def pickled_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, grid=np.array([{"a": 1}], dtype=object))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickled_npz(), "not an archive of numeric arrays (pickled data is never loaded)"),
        (pickle.dumps({"grid": 1}), "not an archive of numeric arrays"),
        (b"garbage", "not an archive of numeric arrays"),
        (None, "no array 'grid'"),
    ],
    ids=["object arrays", "a pickle", "garbage", "an array missing"],
)
def test_a_tampered_evaluation_file_is_one_line(
    tmp_path: Path, shrunk_pipeline, entry, content: bytes | None, message: str
) -> None:
    root = tmp_path / "project"
    shrunk_pipeline.copy_to(root)
    evaluation = root / "reports/evaluation.npz"
    if content is None:  # the real file without its grid
        with np.load(evaluation) as npz:
            kept = {name: npz[name] for name in npz.files if name != "grid"}
        buffer = io.BytesIO()
        np.savez(buffer, **kept)
        content = buffer.getvalue()
    evaluation.write_bytes(content)
    status, out, err = entry(plot.main, root)
    assert status == 1, out + err
    assert one_error(err).startswith(f"error: {evaluation}: {message}")


@pytest.mark.parametrize("stage", ["split", "generate"])
def test_a_folder_where_a_data_file_goes_is_one_line(
    tmp_path: Path, shrunk_pipeline, entry, stage: str
) -> None:
    root = tmp_path / "project"
    shrunk_pipeline.copy_to(root)
    points = root / "data/raw/points.csv"
    points.unlink()
    points.mkdir()
    status, out, err = entry(prepare.main, root, stage)
    assert status == 1, out + err
    assert one_error(err).startswith(f"error: {points}"), err
    assert points.is_dir() and not any(points.iterdir())
    shutil.rmtree(points)
