"""The MLflow UI in a real browser: `mlflow ui` on the shrunk sweep's store, Debian's Chromium
driven headless by Playwright, through scripts/ui_screenshot.py (which makes docs/mlflow-ui.png
and, with --registry, docs/mlflow-registry.png; with --version too, a version's page).

Needs Chromium at /usr/bin/chromium (Debian: `apt-get install chromium`; scripts/ci_services.sh
installs it for CI) or CHROMIUM=/path/to/chrome.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

from .conftest import ROOT, env_for, missing_service, sweep_ids

EXPECTED_RUNS = {
    *("none", "l1_1e-02", "l1_1e-03", "l2_1e-02", "l2_1e-03"),
    *("dropout_0p5", "patience_5", "max_norm_0p5", "noise_0p1_input", "activity_l1_1e-03_post"),
}
# The child runs' metrics the runs table shows, left to right.
SHOWN_METRICS = ["cv_acc_mean", "test_acc_mean", "fresh_acc_mean", "train_acc_mean", "gap_mean"]
# The datasets every run of the sweep logs, and their contexts.
DATASETS = {"moons-train": "training", "moons-test": "test", "moons-fresh": "fresh"}
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
    return sweep_ids(shrunk_pipeline.root)


@pytest.fixture(scope="module")
def ui_url(registry_ui) -> str:
    """The MLflow UI this module's tests look at (one server for them all)."""
    return registry_ui[0]


def store_uri(shrunk_pipeline) -> str:
    return f"sqlite:///{shrunk_pipeline.root / 'mlflow.db'}"


@pytest.fixture(scope="module")
def runs_table(ui, ui_url, shrunk_pipeline, sweep, tmp_path_factory) -> tuple[object, Path]:
    """The sweep's runs table as capture() saw it, and its screenshot; taken once."""
    from mlflow.tracking import MlflowClient

    parent = MlflowClient(tracking_uri=store_uri(shrunk_pipeline)).get_run(sweep["parent_run_id"])
    shot = tmp_path_factory.mktemp("runs-table") / "runs.png"
    # capture() fails unless the columns are on the page, in this order, all in sight.
    table = ui.capture(ui_url, parent.info.experiment_id, parent.info.run_id, shot)
    return table, shot


def test_the_ui_lists_every_child_run_with_its_accuracies(
    ui, runs_table, shrunk_pipeline, sweep
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(shrunk_pipeline))
    parent = client.get_run(sweep["parent_run_id"])
    table, shot = runs_table
    rows = table.rows

    assert list(ui.METRIC_COLUMNS) == SHOWN_METRICS
    shown = {row.name: row for row in rows}
    assert set(shown) == EXPECTED_RUNS | {parent.info.run_name}
    assert shown[parent.info.run_name].run_id == parent.info.run_id
    # The parent has none of them.
    assert shown[parent.info.run_name].cells == dict.fromkeys(SHOWN_METRICS, "-")
    for name, run_id in sweep["runs"].items():
        assert shown[name].run_id == run_id
        assert list(shown[name].cells) == SHOWN_METRICS, name
        metrics = client.get_run(run_id).data.metrics
        for metric in SHOWN_METRICS:
            assert float(shown[name].cells[metric]) == pytest.approx(metrics[metric]), name
    assert_screenshot(shot)


def logged_datasets(run) -> dict[str, str]:
    """A run's datasets as the UI names them, "name (digest)", and their contexts."""
    return {
        f"{found.dataset.name} ({found.dataset.digest})": next(
            tag.value for tag in found.tags if tag.key == "mlflow.data.context"
        )
        for found in run.inputs.dataset_inputs
    }


def test_the_ui_shows_each_runs_datasets_and_logged_models(
    runs_table, shrunk_pipeline, sweep
) -> None:
    from mlflow.tracking import MlflowClient

    uri = store_uri(shrunk_pipeline)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    table, _ = runs_table
    shown = {row.run_id: row for row in table.rows}
    parent = client.get_run(sweep["parent_run_id"])
    logged = logged_datasets(parent)
    assert {name.split(" (")[0]: context for name, context in logged.items()} == DATASETS

    # The Datasets filter offers the three, with their contexts; the parent and every child
    # run list them in the Dataset column, moons-train first (the one in sight, "+2").
    assert table.datasets == logged
    for run_id in [parent.info.run_id, *sweep["runs"].values()]:
        assert set(shown[run_id].datasets) == set(logged_datasets(client.get_run(run_id)))
        assert set(shown[run_id].datasets) == set(logged), run_id
        assert shown[run_id].datasets[0].startswith("moons-train ("), run_id

    # Each child run's Models cell: the logged model named after its configuration, and the
    # "classifier" registered from it for the selected run; the parent has none.
    assert shown[parent.info.run_id].models == ()
    experiment = [parent.info.experiment_id]
    for name, run_id in sweep["runs"].items():
        models = client.search_logged_models(experiment, f"source_run_id = '{run_id}'")
        assert sorted(shown[run_id].models) == sorted(m.name for m in models), name
        assert name in shown[run_id].models
    version = client.get_model_version(registered_name(shrunk_pipeline), "1")
    assert "classifier" in shown[version.run_id].models


def test_the_link_make_ui_prints_opens_the_model_training_view(
    ui, ui_url, shrunk_pipeline, sweep, tmp_path
) -> None:
    """MLflow 3.17 opens an experiment on its GenAI view unless the address or the browser's
    own setting says otherwise; the experiment's mlflow.experimentKind tag does not count. So
    `make ui` prints this link, and it must open Model training in a browser that never chose."""
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    result = screenshot_script(
        "--store", store_uri(shrunk_pipeline), "--link", ui_url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip()
    parent = MlflowClient(tracking_uri=store_uri(shrunk_pipeline)).get_run(sweep["parent_run_id"])
    assert link.startswith(f"{ui_url}/#/experiments/{parent.info.experiment_id}/")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=ui.CHROMIUM, args=ui.CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=ui.VIEWPORT)  # a profile of its own: nothing stored
            page.goto(link, wait_until="domcontentloaded")
            # Model training: the sidebar lists the experiment's Runs, this page, and the model
            # registry; the GenAI view lists neither and titles the runs "Training runs".
            nav = page.get_by_role("navigation")
            runs = nav.get_by_role("link", name="Runs", exact=True)
            expect(runs).to_have_attribute("aria-current", "page", timeout=30_000)
            expect(nav.get_by_role("link", name="Model registry", exact=True)).to_be_visible()
            expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
            # The link chose the view, not a setting the page stored (the sidebar's switch).
            stored = "Object.keys(localStorage).filter(key => key.includes('workflowType'))"
            assert page.evaluate(stored) == []
        finally:
            browser.close()


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
    lines = result.stdout.splitlines()
    assert lines[-1] == f"wrote {out}"
    assert lines[-2].startswith("  Datasets filter: moons-")
    assert {name for name in DATASETS if name + " (" in lines[-2]} == set(DATASETS)
    printed = {line.split()[0]: line for line in lines[:-2]}
    assert set(printed) == set(sweep["runs"]) | {"sweep-default"}
    assert "test_acc_mean 0." in printed["none"]
    assert printed["none"].endswith("datasets 3  models none")
    assert_screenshot(out)


def test_the_screenshot_script_says_when_there_is_no_store(ui, tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = screenshot_script("--store", store, cwd=tmp_path)
    assert result.returncode == 1
    message = f"error: {store}: no such store; run the pipeline first (make run)"
    assert result.stderr.strip() == message
    assert not (tmp_path / "mlflow.db").exists()


def registered_name(shrunk_pipeline) -> str:
    return yaml.safe_load((shrunk_pipeline.root / "params.yaml").read_text())["registry"]["name"]


@pytest.fixture(scope="module")
def registry_ui(ui, shrunk_pipeline, tmp_path_factory) -> Iterator[tuple[str, str, str]]:
    """`mlflow ui`, started once for this module's tests, on a copy of the shrunk pipeline's
    store (its runs keep their artifacts where the pipeline logged them) where version 1,
    registered as the candidate, is promoted to champion too, and a second model has no
    versions. Yields (UI URL, store URI, the model's name)."""
    from mlflow.tracking import MlflowClient

    root = shrunk_pipeline.root
    name = registered_name(shrunk_pipeline)
    copy = tmp_path_factory.mktemp("registry-ui") / "mlflow.db"
    shutil.copy2(root / "mlflow.db", copy)
    uri = f"sqlite:///{copy}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert shown_aliases(uri, name) == {"1": ("candidate",)}  # what the register stage set
    # What `python -m overfit.commands.promote` does to a first candidate (tests/test_registry.py).
    client.set_registered_model_alias(name, "champion", "1")
    client.create_registered_model("no-versions")
    with ui.mlflow_ui(uri) as url:
        yield url, uri, name


def shown_aliases(store: str, name: str) -> dict[str, tuple[str, ...]]:
    """Each version of the model in the store, and its aliases in alphabetical order."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    found = {str(v.version): [] for v in client.search_model_versions(f"name = '{name}'")}
    for alias, version in client.get_registered_model(name).aliases.items():
        found[str(version)].append(alias)
    return {version: tuple(sorted(aliases)) for version, aliases in found.items()}


def test_the_registry_page_shows_each_version_with_its_aliases(ui, registry_ui, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    url, store, name = registry_ui
    shot = tmp_path / "registry.png"

    versions = ui.capture_registry(url, name, shot)

    assert {v.version: tuple(sorted(v.aliases)) for v in versions} == shown_aliases(store, name)
    assert [(v.version, set(v.aliases)) for v in versions] == [("1", {"candidate", "champion"})]
    # The version's tags as the register stage recorded them: where it came from, its figures.
    recorded = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version(name, "1")
    assert versions[0].tags == recorded.tags
    assert {"overfit.run", "overfit.selection_rule", "cv_acc", "test_acc"} <= set(recorded.tags)
    assert_screenshot(shot)


def test_the_screenshot_script_shows_the_registry_or_says_what_is_missing(
    registry_ui, tmp_path
) -> None:
    url, _, name = registry_ui
    out = tmp_path / "docs/mlflow-registry.png"
    result = screenshot_script("--url", url, "--registry", name, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"  {name} version 1  aliases candidate, champion",
        f"wrote {out}",
    ]
    assert_screenshot(out)

    for model, message in [
        ("no-such-model", "the MLflow UI shows no registered model no-such-model"),
        ("no-versions", "the MLflow UI shows no versions of registered model no-versions"),
    ]:
        out = tmp_path / f"{model}.png"
        result = screenshot_script(
            "--url", url, "--registry", model, "--out", str(out), cwd=tmp_path
        )
        assert result.returncode == 1, model
        assert result.stderr.strip() == f"error: {message}"
        assert not out.exists()


def test_the_version_page_shows_the_model_card(ui, registry_ui, tmp_path) -> None:
    """The version's description is its model card, drawn from Markdown: its heading names
    the model, the run and the seed; its Lineage list follows the table of figures."""
    from mlflow.tracking import MlflowClient

    url, store, name = registry_ui
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    recorded = client.get_model_version(name, "1")
    run = client.get_run(recorded.run_id).info.run_name
    shot = tmp_path / "version.png"

    shown = ui.capture_version(url, name, "1", shot)

    assert shown.source_run == run
    assert shown.source_model == "classifier"
    lines = shown.description.splitlines()
    assert lines[0].startswith(f"{name}: {run}, seed ")
    assert recorded.description.startswith(f"# {lines[0]}\n")  # the heading, without its #
    assert "Lineage." in lines
    assert lines.index("Lineage.") > 1
    assert_screenshot(shot)


def test_the_screenshot_script_shows_a_versions_card_or_says_it_is_missing(
    registry_ui, tmp_path
) -> None:
    from mlflow.tracking import MlflowClient

    url, store, name = registry_ui
    recorded = MlflowClient(tracking_uri=store, registry_uri=store).get_model_version(name, "1")
    run = MlflowClient(tracking_uri=store).get_run(recorded.run_id).info.run_name
    out = tmp_path / "docs/mlflow-version.png"
    args = ("--url", url, "--registry", name, "--version")
    result = screenshot_script(*args, "1", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"  {name} version 1  run {run}  model classifier",
        f"  description: {recorded.description.splitlines()[0].removeprefix('# ')}",
        f"wrote {out}",
    ]
    assert_screenshot(out)

    missing = tmp_path / "missing.png"
    result = screenshot_script(*args, "7", "--out", str(missing), cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"error: the MLflow UI shows no version 7 of registered model {name}"
    )
    assert not missing.exists()
