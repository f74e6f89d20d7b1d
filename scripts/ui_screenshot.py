"""A screenshot of the sweep in the MLflow UI: the parent run, its child runs, their accuracies.

    .venv/bin/python scripts/ui_screenshot.py                    # this project's mlflow.db
    .venv/bin/python scripts/ui_screenshot.py --store sqlite:////path/to/mlflow.db --out x.png
    .venv/bin/python scripts/ui_screenshot.py --url http://127.0.0.1:5001   # a running server
    .venv/bin/python scripts/ui_screenshot.py --link http://127.0.0.1:5000  # print its address
    .venv/bin/python scripts/ui_screenshot.py --registry overfit-moons      # the registered model
    .venv/bin/python scripts/ui_screenshot.py --registry overfit-moons --version 1  # its card

Starts `mlflow ui` on a free port (unless --url names a running server), drives Chromium
headless through Playwright, and writes docs/mlflow-ui.png by default: the runs table with each
run's datasets and logged models, and the sweep's metrics. It prints what each row shows, and
the datasets the view's Datasets filter offers.

--registry NAME screenshots, instead, the registered model's page in the Model Registry: its
versions with their tags and aliases (candidate, champion, previous), its description folded
away; docs/mlflow-registry.png by default. It prints the versions and aliases the page shows.
With --version N, the page of that version instead: where it came from and its description
(the model card); docs/mlflow-version.png by default. Needs Chromium at
/usr/bin/chromium (Debian: `apt-get install chromium`; scripts/ci_services.sh installs it) or
CHROMIUM=/path/to/chrome; Playwright's own browser download is not used.

--link prints, instead, the address of the sweep's runs (or, with --registry, of the model's
page) on the UI at that base URL, in the "Model training" view (what `make ui` prints).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # running as root (CI) needs it
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# What a reader compares across the sweep: the selection's estimate (cross-validation), then
# the accuracies on the test, fresh and training data, and the train-test gap.
# How long a version page may take to draw its source model link (a version may have none).
SOURCE_MODEL_WAIT_MS = 15_000
METRIC_COLUMNS = ("cv_acc_mean", "test_acc_mean", "fresh_acc_mean", "train_acc_mean", "gap_mean")
# Default columns kept, by name, and their widths: the run's name ("max_norm_0p25" under its
# parent), its first dataset ("moons-train (302...", "+2" for the others) and its logged models
# ("max_norm_0p25", "classifier +1").
SHOWN_COLUMNS = {"Run Name": 205, "Dataset": 200, "Models": 155}
# Default columns that stay empty for this project (no source: runs are logged from Python).
HIDDEN_COLUMNS = ("Source",)
# Wide enough for a whole header ("fresh_acc_mean") and "0.735714"; fitted to the values they
# would be huge. The sidebar is folded to its icons to make room for all the columns.
COLUMN_WIDTH = 125
VIEWPORT = {"width": 1600, "height": 1000}
UI_START_TIMEOUT = 90.0
# The model page draws the model (its heading and aliases) and its versions from two requests;
# the versions table is read until this many reads in a row, this far apart, agree.
STABLE_READS, READ_INTERVAL_MS = 3, 300


class UIError(RuntimeError):
    """The UI did not show what it should; the message says what was missing."""


@dataclass(frozen=True)
class Row:
    run_id: str
    name: str
    cells: dict[str, str]  # metric name -> the text the UI shows
    datasets: tuple[str, ...] = ()  # "name (digest)", in the Dataset cell's order
    models: tuple[str, ...] = ()  # the logged models' names: those in sight, then the "+N" ones


@dataclass(frozen=True)
class RunsTable:
    """What the runs view shows: its rows, and the datasets its Datasets filter offers."""

    rows: list[Row]
    datasets: dict[str, str]  # "name (digest)" -> context ("training", ...), in the menu's order


@dataclass(frozen=True)
class Version:
    """A row of the registered model's versions table, as the page shows it."""

    version: str
    aliases: tuple[str, ...]  # in the page's order
    tags: dict[str, str]


@dataclass(frozen=True)
class VersionPage:
    """A model version's own page, as it shows it."""

    source_run: str  # the name of the run it came from
    source_model: str  # the name of the logged model it was registered from
    description: str  # the description's text as drawn (Markdown rendered): the model card


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def mlflow_ui(store_uri: str) -> Iterator[str]:
    """`mlflow ui` on a free port for the duration; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # Its GenAI job runner adds six processes and ~1 GB that browsing runs never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one group: the server and its workers stop together
        )
        try:
            deadline = time.monotonic() + UI_START_TIMEOUT
            while not _answers(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = "\n".join(log.read().decode(errors="replace").splitlines()[-15:])
                    raise UIError(f"mlflow ui did not start ({' '.join(command)}):\n{tail}")
                time.sleep(0.5)
            yield url
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def runs_page(base_url: str, experiment_id: str) -> str:
    """The experiment's runs in the UI's "Model training" view.

    MLflow 3.17's UI picks the view from this query parameter, else from the browser's own
    setting (localStorage, "GenAI" until the user flips the sidebar switch); it ignores the
    experiment's mlflow.experimentKind tag. Without the parameter a new browser gets GenAI.
    """
    return f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def registry_page(base_url: str, name: str) -> str:
    """The registered model's page (versions, tags, aliases), in the Model training view: its
    sidebar has the Model registry link (see runs_page)."""
    return f"{base_url}/#/models/{urllib.parse.quote(name, safe='')}?workflowType=machine_learning"


def version_page(base_url: str, name: str, version: str) -> str:
    """A version's page (source run and model, description, tags), in the Model training view."""
    model = urllib.parse.quote(name, safe="")
    return f"{base_url}/#/models/{model}/versions/{version}?workflowType=machine_learning"


def _check_chromium() -> None:
    if not Path(CHROMIUM).is_file():
        raise UIError(
            f"no Chromium at {CHROMIUM}: `apt-get install chromium` "
            "(scripts/ci_services.sh), or set CHROMIUM to a Chrome/Chromium binary"
        )


def capture(
    base_url: str,
    experiment_id: str,
    parent_run_id: str,
    out: Path,
    metrics: Sequence[str] = METRIC_COLUMNS,
) -> RunsTable:
    """Open the runs table, expand the sweep's parent run, show the metric columns in the order
    given after the datasets and models, all within the page's width, and take the screenshot.

    Returns the rows as the page shows them (run id, name, metric texts, datasets, models) and
    the Datasets filter's choices, for checking.
    """
    with (
        _one_line(f"the runs page of experiment {experiment_id}"),
        browser_page(runs_page(base_url, experiment_id)) as page,
    ):
        parent = page.locator(f'[role=row][row-id="{parent_run_id}"]').first
        parent.wait_for()
        _close_assistant(page)
        page.get_by_role("button", name="Toggle sidebar", exact=True).click()  # to its icons
        _expand(page, parent_run_id)
        _show_columns(page, metrics)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
        # Read after the picture: the popovers opened below leave the focus on their buttons.
        return RunsTable(_read_rows(page, metrics), _dataset_filter(page))


@contextlib.contextmanager
def _one_line(page: str) -> Iterator[None]:
    """A Playwright error (a timeout: the page never drew what was awaited) as a UIError line."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        yield
    except PlaywrightError as error:
        first = str(error).splitlines()[0]
        raise UIError(f"{page} did not load: {first}") from None


@contextlib.contextmanager
def browser_page(url: str) -> Iterator[Any]:
    """A page of headless Chromium at the UI's size, opened on `url`; closed afterwards."""
    _check_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.set_default_timeout(30_000)
            page.goto(url, wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()


def capture_registry(base_url: str, name: str, out: Path) -> list[Version]:
    """Open the registered model's page, wait until its versions and their aliases are drawn,
    and take the screenshot.

    Returns the versions as the page shows them (number, aliases, tags), newest first; raises
    UIError if the page shows no such model, or no versions of it.
    """
    with (
        _one_line(f"the page of registered model {name}"),
        browser_page(registry_page(base_url, name)) as page,
    ):
        versions = _read_versions(page, name)
        _close_assistant(page)
        _fold_description(page)
        page.mouse.move(VIEWPORT["width"] / 2, 60)  # off the table: no row highlighted
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
    return versions


def _fold_description(page: Any) -> None:
    """The model's description (its model card, also on each version's page) would push the
    versions out of the picture: fold it, as the Tags section is."""
    header = page.locator("[role=button][aria-expanded=true]", has_text="Description")
    if header.count():
        header.first.locator("[role=img]").first.click()  # its arrow (the text has Edit)
        page.locator("[role=button][aria-expanded=false]", has_text="Description").wait_for()


def capture_version(base_url: str, name: str, version: str, out: Path) -> VersionPage:
    """Open a model version's page, wait until its description is drawn, and take the
    screenshot. Returns what the page shows; raises UIError if it shows no such version."""
    with (
        _one_line(f"the page of {name} version {version}"),
        browser_page(version_page(base_url, name, version)) as page,
    ):
        shown = _read_version_page(page, name, version)
        _close_assistant(page)
        page.mouse.move(VIEWPORT["width"] / 2, 60)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
    return shown


def _read_version_page(page: Any, name: str, version: str) -> VersionPage:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    missing = page.get_by_text("Page Not Found", exact=True)
    heading = page.get_by_role("heading", name=f"Version {version}", exact=True)
    heading.or_(missing).first.wait_for()
    if missing.count():
        raise UIError(f"the MLflow UI shows no version {version} of registered model {name}")
    # The source run's name comes from a request of its own; the description with the version.
    run = page.get_by_test_id("descriptions-item").filter(has_text="Source Run").locator("a")
    run.first.wait_for()
    # The source model's link comes from a request of its own too; a version registered from a
    # run's files has none, so its absence is only known once the wait runs out.
    model = page.get_by_test_id("source-model-link")
    with contextlib.suppress(PlaywrightTimeout):
        model.first.wait_for(timeout=SOURCE_MODEL_WAIT_MS)
    card = page.get_by_test_id("note-editor-preview-content")
    return VersionPage(
        run.first.inner_text().strip(),
        model.first.inner_text().strip() if model.count() else "",
        card.first.inner_text().strip() if card.count() else "",
    )


# A version's row holds the link to the version's own page.
_VERSION_LINK = '[role=row] a[href*="/versions/"]'


def _read_versions(page: Any, name: str) -> list[Version]:
    missing = page.get_by_text("Page Not Found", exact=True)
    empty = page.get_by_text("No models versions are registered yet")
    page.locator(_VERSION_LINK).or_(missing).or_(empty).first.wait_for()
    if missing.count():
        raise UIError(f"the MLflow UI shows no registered model {name}")
    page.get_by_role("heading", name=name, exact=True).wait_for()
    reads: list[list[Version]] = []
    while len(reads) < STABLE_READS or any(read != reads[-1] for read in reads[-STABLE_READS:]):
        if reads:
            page.wait_for_timeout(READ_INTERVAL_MS)
        if len(reads) > 100:  # 30 s
            raise UIError(f"the versions of registered model {name} kept changing on the page")
        reads.append(_version_rows(page))
    if not reads[-1]:
        raise UIError(f"the MLflow UI shows no versions of registered model {name}")
    return reads[-1]


def _version_rows(page: Any) -> list[Version]:
    versions = []
    for row in page.locator("[role=row]").all():
        link = row.locator('a[href*="/versions/"]')
        if not link.count():
            continue  # the header
        number = link.first.get_attribute("href").rstrip("/").rsplit("/", 1)[-1]
        chips = row.locator('[data-component-id*="modelversionaliastag"][title]')
        aliases = tuple(chip.get_attribute("title") for chip in chips.all())
        tags = {}
        for tag in row.locator('[data-component-id*="keyvaluetag"][role=status]').all():
            parts = tag.locator("span[title]")
            if parts.count() >= 2:
                tags[parts.nth(0).get_attribute("title")] = parts.nth(1).get_attribute("title")
        versions.append(Version(number, aliases, tags))
    return versions


def _close_assistant(page: Any) -> None:
    """The assistant side panel takes a third of the page; close it when it is open."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():
        close.first.click()


def _expand(page: Any, parent_run_id: str) -> None:
    """Show the child runs under the parent (the table lists top-level runs only)."""
    toggle = page.locator(
        f'[role=row][row-id="{parent_run_id}"] button[data-component-id*="runnamecellrenderer"]'
    )
    if not toggle.count():
        raise UIError(f"no expand button on the parent run {parent_run_id}: it has no children?")
    toggle.first.click()
    # The parent's row first, then its children.
    page.locator("[role=row][row-index='1']").first.wait_for()


def _show_columns(page: Any, metrics: Sequence[str]) -> None:
    """Tick the metrics in the Columns menu (it toggles), untick the empty defaults; narrow the
    kept defaults, widen the metrics, in that order: the grid draws only the columns in sight."""
    page.get_by_role("button", name="Columns", exact=True).click()
    menu = page.get_by_role("dialog")
    for name in [*metrics, *HIDDEN_COLUMNS]:
        item = menu.get_by_text(name, exact=True)
        if name in metrics and not item.count():
            raise UIError(f"the Columns menu has no metric {name}")
        if item.count():
            item.first.click()
    page.keyboard.press("Escape")
    _header(page, metrics[0]).wait_for()
    for name, width in SHOWN_COLUMNS.items():
        header = page.locator(f'[role=columnheader][col-id="{_attribute(name)}"]')
        if not header.count():
            raise UIError(f"the runs table has no {name} column")
        _resize(page, header.first, width)
    for name in metrics:
        header = _header(page, name)
        header.wait_for()
        _resize(page, header, COLUMN_WIDTH)
    grid = page.locator(".ag-center-cols-viewport").first.bounding_box()
    right = max(_box(page, name)["x"] + _box(page, name)["width"] for name in metrics)
    if grid is None or right > grid["x"] + grid["width"]:
        raise UIError(f"the metric columns do not fit in the page ({VIEWPORT['width']} px wide)")
    _order(page, metrics)
    page.mouse.move(VIEWPORT["width"] / 2, 60)  # off the grid: no header left highlighted


def _header(page: Any, metric: str) -> Any:
    return page.locator(f'[role=columnheader][col-id="metrics.`{metric}`"]').first


def _attribute(name: str) -> str:
    """The grid's col-id of a default column ("Dataset", "Models", ...)."""
    return f"attributes.`{name}`"


def _box(page: Any, metric: str) -> dict[str, float]:
    # The grid leaves out the headers of columns scrolled out of sight.
    header = _header(page, metric)
    box = header.bounding_box() if header.count() else None
    if box is None:
        raise UIError(f"the metric columns do not fit in the page: no {metric} in sight")
    return box


def _shown_order(page: Any, metrics: Sequence[str]) -> list[str]:
    return sorted(metrics, key=lambda name: _box(page, name)["x"])


def _order(page: Any, metrics: Sequence[str]) -> None:
    """Put the columns in the order given (the grid lists metrics alphabetically): drag each
    header onto the left edge of the one now in its place."""
    for place, name in enumerate(metrics):
        there = _shown_order(page, metrics)[place]
        if there == name:
            continue
        start, target = _box(page, name), _box(page, there)
        x, y = start["x"] + start["width"] / 2, start["y"] + start["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        for step in range(1, 21):  # the grid follows the pointer only in small moves
            page.mouse.move(x + (target["x"] + 5 - x) * step / 20, y)
            page.wait_for_timeout(20)
        page.mouse.up()
    shown = _shown_order(page, metrics)
    if shown != list(metrics):
        raise UIError(f"the metric columns show as {shown}, not {list(metrics)}")


def _resize(page: Any, header: Any, width: float) -> None:
    """Drag the header's right edge until the column is `width` wide (the grid overshoots a
    drag by a few pixels: a second one corrects it)."""
    handle = header.locator(".ag-header-cell-resize")
    for _ in range(3):
        box, edge = header.bounding_box(), handle.first.bounding_box() if handle.count() else None
        if not box or not edge or abs(box["width"] - width) < 1:
            return
        x, y = edge["x"] + edge["width"] / 2, edge["y"] + edge["height"] / 2
        handle.first.hover()
        page.mouse.down()
        for step in range(1, 11):  # the grid follows the pointer only in small moves
            page.mouse.move(x + (width - box["width"]) * step / 10, y)
            page.wait_for_timeout(20)
        page.mouse.up()


def _read_rows(page: Any, metrics: Sequence[str]) -> list[Row]:
    names: dict[str, str] = {}
    for row in page.locator("[role=row][row-id]").all():
        # The name is the cell's link; the cell also holds the run's colour as hidden text.
        link = row.locator('[col-id="attributes.`Run Name`"] a')
        if link.count():
            names[row.get_attribute("row-id")] = link.first.inner_text().strip()
    return [_read_row(page, run_id, name, metrics) for run_id, name in names.items()]


def _read_row(page: Any, run_id: str, name: str, metrics: Sequence[str]) -> Row:
    # The grid pins the name column: a run's other cells are in another element, same row-id.
    row = f'[role=row][row-id="{run_id}"]'
    cells = {}
    for metric in metrics:
        cell = page.locator(f'{row} [col-id="metrics.`{metric}`"]')
        if cell.count():
            cells[metric] = cell.first.inner_text().strip()
    # Each dataset's button says "name (digest)", in full, however narrow the cell.
    buttons = page.locator(f'{row} [col-id="{_attribute("Dataset")}"] {_DATASET}').all()
    datasets = tuple(button.text_content().strip() for button in buttons)
    return Row(run_id, name, cells, datasets, _models(page, row))


_DATASET = '[data-testid="open-dataset-drawer"]'
# A model's name links to its page: a logged model's, or a registered version's.
_MODEL_LINK = 'a[href*="/models/"]'


def _models(page: Any, row: str) -> tuple[str, ...]:
    """The models in a run's Models cell: those in sight, then those its "+N" button lists."""
    cell = page.locator(f'{row} [col-id="{_attribute("Models")}"]').first
    if not cell.count():
        return ()
    names = [link.inner_text().strip() for link in cell.locator(_MODEL_LINK).all()]
    more = cell.locator("button[aria-haspopup=dialog]")
    if more.count():
        more.first.click()
        popover = page.get_by_role("dialog").filter(has=page.locator(_MODEL_LINK))
        popover.first.wait_for()
        names += [link.inner_text().strip() for link in popover.first.locator(_MODEL_LINK).all()]
        page.keyboard.press("Escape")
        popover.first.wait_for(state="detached")
    return tuple(names)


def _dataset_filter(page: Any) -> dict[str, str]:
    """The datasets the view's Datasets filter offers: {"name (digest)": context}."""
    dropdown = page.get_by_test_id("datasets-select-dropdown")
    if not dropdown.count() or dropdown.first.is_disabled():  # the runs logged none
        return {}
    dropdown.first.click()
    options = page.get_by_role("listbox", name="Datasets options").get_by_role("option")
    options.first.wait_for()
    offered = {}
    for option in options.all():
        tag = option.locator("[role=status]")  # the context, after the name
        context = tag.first.text_content().strip() if tag.count() else ""
        offered[option.text_content().strip().removesuffix(context).strip()] = context
    page.keyboard.press("Escape")
    return offered


def _check_store(store_uri: str) -> None:
    from overfit.tracking.store import StoreError, follow_move

    if not store_uri.startswith("sqlite:///"):
        return
    database = Path(store_uri[len("sqlite:///") :])
    # MLflow would create an empty store where there is none.
    if not database.is_file():
        raise UIError(f"{store_uri}: no such store; run the pipeline first (make run)")
    try:  # a moved project's store: its artifacts are beside it, not in the old folder
        follow_move(database)
    except StoreError as error:
        raise UIError(str(error)) from None


def _sweep(store_uri: str) -> tuple[str, str]:
    """(experiment id, parent run id) of the newest finished sweep in the store."""
    from mlflow.tracking import MlflowClient

    _check_store(store_uri)
    client = MlflowClient(tracking_uri=store_uri)
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.`overfit.stage` = 'train' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not parents:
        raise UIError(f"no finished sweep in {store_uri}: run the pipeline first (make run)")
    return parents[0].info.experiment_id, parents[0].info.run_id


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        default=f"sqlite:///{ROOT / 'mlflow.db'}",
        help="backend store to browse with `mlflow ui` (default: the project's mlflow.db)",
    )
    where.add_argument("--url", help="a running MLflow server to browse instead")
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write the picture (default: docs/mlflow-ui.png; with --registry, "
        "docs/mlflow-registry.png; with --version too, docs/mlflow-version.png)",
    )
    parser.add_argument(
        "--link",
        metavar="BASE_URL",
        help="print the sweep's (with --registry, the model's) address on the UI at BASE_URL "
        "(Model training view) and exit",
    )
    parser.add_argument(
        "--registry",
        metavar="NAME",
        help="screenshot the registered model NAME's page (its versions and aliases) instead",
    )
    parser.add_argument(
        "--version",
        help="with --registry: screenshot that version's page (its description) instead",
    )
    args = parser.parse_args(argv)
    if args.version and not args.registry:
        parser.error("--version needs --registry NAME")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.registry:
        _registry_main(args)
        return
    args.out = args.out or ROOT / "docs/mlflow-ui.png"
    try:
        experiment_id, parent = _sweep(args.url or args.store)
        if args.link:
            print(runs_page(args.link.rstrip("/"), experiment_id))
            return
        if args.url:
            table = capture(args.url.rstrip("/"), experiment_id, parent, args.out)
        else:
            with mlflow_ui(args.store) as url:
                table = capture(url, experiment_id, parent, args.out)
    except UIError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    for row in table.rows:
        shown = [f"{k} {v}" for k, v in row.cells.items()]
        shown.append(f"datasets {len(row.datasets)}  models {', '.join(row.models) or '-'}")
        print(f"  {row.name:<16} " + "  ".join(shown))
    print("  Datasets filter: " + (", ".join(table.datasets) or "-"))
    print(f"wrote {args.out}")


def _registry_main(args: argparse.Namespace) -> None:
    picture = "docs/mlflow-version.png" if args.version else "docs/mlflow-registry.png"
    out = args.out or ROOT / picture
    try:
        if args.link:
            base = args.link.rstrip("/")
            page = args.version and version_page(base, args.registry, args.version)
            print(page or registry_page(base, args.registry))
            return
        if args.url:
            lines = _show_registry(args.url.rstrip("/"), args.registry, args.version, out)
        else:
            _check_store(args.store)
            with mlflow_ui(args.store) as url:
                lines = _show_registry(url, args.registry, args.version, out)
    except UIError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    print("\n".join([*lines, f"wrote {out}"]))


def _show_registry(base_url: str, name: str, version: str | None, out: Path) -> list[str]:
    """Take the picture of the model's page, or of the version's; say what it shows."""
    if not version:
        versions = capture_registry(base_url, name, out)
        return [
            f"  {name} version {v.version}  aliases {', '.join(v.aliases) or '-'}" for v in versions
        ]
    shown = capture_version(base_url, name, version, out)
    heading = shown.description.splitlines()[0] if shown.description else "-"
    return [
        f"  {name} version {version}  run {shown.source_run}  model {shown.source_model or '-'}",
        f"  description: {heading}",
    ]


if __name__ == "__main__":
    main()
