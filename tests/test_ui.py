"""The MLflow UI in a real browser: `mlflow ui` on the shrunk sweep's store, Debian's Chromium
driven headless by Playwright, through scripts/ui_screenshot.py (which makes docs/mlflow-ui.png).

Needs Chromium at /usr/bin/chromium (Debian: `apt-get install chromium`; scripts/ci_services.sh
installs it for CI) or CHROMIUM=/path/to/chrome.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from .conftest import ROOT, env_for, missing_service

EXPECTED_RUNS = {"none", "l1_1e-02", "l1_1e-03", "l2_1e-02", "l2_1e-03"}
SCRIPT = ROOT / "scripts/ui_screenshot.py"


@pytest.fixture(scope="module")
def ui() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ui_screenshot", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    if not Path(module.CHROMIUM).is_file():
        missing_service(
            f"no Chromium at {module.CHROMIUM}: run scripts/ci_services.sh "
            "(apt-get install chromium) or set CHROMIUM"
        )
    return module


def assert_screenshot(path: Path) -> None:
    """A real picture of the page: a PNG of the browser's size, with text and colour in it."""
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert path.stat().st_size > 30_000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (1000, 1600)
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100, "the page is (nearly) blank"


@pytest.fixture(scope="module")
def sweep(shrunk_pipeline) -> dict:
    root = shrunk_pipeline.root
    return json.loads((root / "reports/sweep.json").read_text())


@pytest.fixture(scope="module")
def ui_url(ui, shrunk_pipeline) -> Iterator[str]:
    """`mlflow ui` on the shrunk sweep's store, started once for this module's tests."""
    root = shrunk_pipeline.root
    with ui.mlflow_ui(f"sqlite:///{root / 'mlflow.db'}") as url:
        yield url


def test_the_ui_lists_every_child_run_with_its_test_accuracy(
    ui, ui_url, shrunk_pipeline, sweep, tmp_path
) -> None:
    from mlflow.tracking import MlflowClient

    root = shrunk_pipeline.root
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    parent = client.get_run(sweep["parent_run_id"])
    shot = tmp_path / "runs.png"

    rows = ui.capture(ui_url, parent.info.experiment_id, parent.info.run_id, shot)

    shown = {row.name: row for row in rows}
    assert set(shown) == EXPECTED_RUNS | {parent.info.run_name}
    assert shown[parent.info.run_name].run_id == parent.info.run_id
    assert shown[parent.info.run_name].cells["test_acc_mean"] == "-"  # the parent has none
    for name, run_id in sweep["runs"].items():
        assert shown[name].run_id == run_id
        metrics = client.get_run(run_id).data.metrics
        for metric in ("test_acc_mean", "train_acc_mean", "gap_mean"):
            assert float(shown[name].cells[metric]) == pytest.approx(metrics[metric]), name
    assert_screenshot(shot)


def screenshot_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=env_for(cwd),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_screenshot_script_finds_the_sweep_itself(ui_url, sweep, tmp_path) -> None:
    out = tmp_path / "docs/mlflow-ui.png"
    result = screenshot_script("--url", ui_url, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"wrote {out}"
    printed = {line.split()[0]: line for line in result.stdout.splitlines()[:-1]}
    assert set(printed) == set(sweep["runs"]) | {"sweep-default"}
    assert "test_acc_mean 0." in printed["none"]
    assert_screenshot(out)


def test_the_screenshot_script_says_when_there_is_no_store(ui, tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = screenshot_script("--store", store, cwd=tmp_path)
    assert result.returncode == 1
    message = f"error: {store}: no such store; run the pipeline first (make run)"
    assert result.stderr.strip() == message
    assert not (tmp_path / "mlflow.db").exists()
