"""A screenshot of the sweep in the MLflow UI: the parent run, its child runs, their accuracies.

    .venv/bin/python scripts/ui_screenshot.py                    # this project's mlflow.db
    .venv/bin/python scripts/ui_screenshot.py --store sqlite:////path/to/mlflow.db --out x.png
    .venv/bin/python scripts/ui_screenshot.py --url http://127.0.0.1:5001   # a running server
    .venv/bin/python scripts/ui_screenshot.py --link http://127.0.0.1:5000  # print its address
    .venv/bin/python scripts/ui_screenshot.py --registry overfit-moons      # the registered model

Starts `mlflow ui` on a free port (unless --url names a running server), drives Chromium
headless through Playwright, and writes docs/mlflow-ui.png by default.

--registry NAME screenshots, instead, the registered model's page in the Model Registry: its
versions with their tags and aliases (candidate, champion, previous); docs/mlflow-registry.png
by default. It prints the versions and aliases the page shows. Needs Chromium at
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
METRIC_COLUMNS = ("cv_acc_mean", "test_acc_mean", "fresh_acc_mean", "train_acc_mean", "gap_mean")
# Default columns that stay empty for this project (no datasets, sources or logged models).
HIDDEN_COLUMNS = ("Dataset", "Source", "Models")
# Wide enough for a whole header and "0.7357142..."; fitted to the values they would be huge.
COLUMN_WIDTH = 150
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


@dataclass(frozen=True)
class Version:
    """A row of the registered model's versions table, as the page shows it."""

    version: str
    aliases: tuple[str, ...]  # in the page's order
    tags: dict[str, str]


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
) -> list[Row]:
    """Open the runs table, expand the sweep's parent run, show the metric columns in the order
    given, all within the page's width, and take the screenshot.

    Returns the rows as the page shows them (run id, name, metric texts), for checking.
    """
    with browser_page(runs_page(base_url, experiment_id)) as page:
        parent = page.locator(f'[role=row][row-id="{parent_run_id}"]').first
        parent.wait_for()
        _close_assistant(page)
        _expand(page, parent_run_id)
        _show_columns(page, metrics)
        rows = _read_rows(page, metrics)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
    return rows


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
    from playwright.sync_api import Error as PlaywrightError

    with browser_page(registry_page(base_url, name)) as page:
        try:
            versions = _read_versions(page, name)
        except PlaywrightError as error:
            first = str(error).splitlines()[0]
            raise UIError(f"the page of registered model {name} did not load: {first}") from None
        _close_assistant(page)
        page.mouse.move(VIEWPORT["width"] / 2, 60)  # off the table: no row highlighted
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
    return versions


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
    """Tick the metrics in the Columns menu (it toggles), untick the empty defaults."""
    page.get_by_role("button", name="Columns", exact=True).click()
    menu = page.get_by_role("dialog")
    for name in [*metrics, *HIDDEN_COLUMNS]:
        item = menu.get_by_text(name, exact=True)
        if name in metrics and not item.count():
            raise UIError(f"the Columns menu has no metric {name}")
        if item.count():
            item.first.click()
    page.keyboard.press("Escape")
    for name in metrics:
        header = _header(page, name)
        header.wait_for()
        _widen(page, header)
    grid = page.locator(".ag-center-cols-viewport").first.bounding_box()
    right = max(_box(page, name)["x"] + _box(page, name)["width"] for name in metrics)
    if grid is None or right > grid["x"] + grid["width"]:
        raise UIError(f"the metric columns do not fit in the page ({VIEWPORT['width']} px wide)")
    _order(page, metrics)
    page.mouse.move(VIEWPORT["width"] / 2, 60)  # off the grid: no header left highlighted


def _header(page: Any, metric: str) -> Any:
    return page.locator(f'[role=columnheader][col-id="metrics.`{metric}`"]').first


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


def _widen(page: Any, header: Any) -> None:
    """Drag the header's right edge until the column is COLUMN_WIDTH wide."""
    handle = header.locator(".ag-header-cell-resize")
    box, edge = header.bounding_box(), handle.first.bounding_box() if handle.count() else None
    if not box or not edge or box["width"] >= COLUMN_WIDTH:
        return
    x, y = edge["x"] + edge["width"] / 2, edge["y"] + edge["height"] / 2
    handle.first.hover()
    page.mouse.down()
    for step in range(1, 11):  # the grid follows the pointer only in small moves
        page.mouse.move(x + (COLUMN_WIDTH - box["width"]) * step / 10, y)
        page.wait_for_timeout(20)
    page.mouse.up()


def _read_rows(page: Any, metrics: Sequence[str]) -> list[Row]:
    rows: dict[str, Row] = {}
    for row in page.locator("[role=row][row-id]").all():
        run_id = row.get_attribute("row-id")
        # The name is the cell's link; the cell also holds the run's colour as hidden text.
        link = row.locator('[col-id="attributes.`Run Name`"] a')
        if link.count():
            rows[run_id] = Row(run_id, link.first.inner_text().strip(), {})
    # The grid pins the name column: a run's metric cells are in another element, same row-id.
    for run_id, found in rows.items():
        for name in metrics:
            cell = page.locator(f'[role=row][row-id="{run_id}"] [col-id="metrics.`{name}`"]')
            if cell.count():
                found.cells[name] = cell.first.inner_text().strip()
    return list(rows.values())


def _check_store(store_uri: str) -> None:
    # MLflow would create an empty store where there is none.
    if store_uri.startswith("sqlite:///") and not Path(store_uri[len("sqlite:///") :]).is_file():
        raise UIError(f"{store_uri}: no such store; run the pipeline first (make run)")


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
        "docs/mlflow-registry.png)",
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
    args = parser.parse_args(argv)
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
            rows = capture(args.url.rstrip("/"), experiment_id, parent, args.out)
        else:
            with mlflow_ui(args.store) as url:
                rows = capture(url, experiment_id, parent, args.out)
    except UIError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    for row in rows:
        print(f"  {row.name:<16} " + "  ".join(f"{k} {v}" for k, v in row.cells.items()))
    print(f"wrote {args.out}")


def _registry_main(args: argparse.Namespace) -> None:
    out = args.out or ROOT / "docs/mlflow-registry.png"
    try:
        if args.link:
            print(registry_page(args.link.rstrip("/"), args.registry))
            return
        if args.url:
            versions = capture_registry(args.url.rstrip("/"), args.registry, out)
        else:
            _check_store(args.store)
            with mlflow_ui(args.store) as url:
                versions = capture_registry(url, args.registry, out)
    except UIError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    for version in versions:
        aliases = ", ".join(version.aliases) or "-"
        print(f"  {args.registry} version {version.version}  aliases {aliases}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
