"""A screenshot of the sweep in the MLflow UI: the parent run, its child runs, their accuracies.

    .venv/bin/python scripts/ui_screenshot.py                    # this project's mlflow.db
    .venv/bin/python scripts/ui_screenshot.py --store sqlite:////path/to/mlflow.db --out x.png
    .venv/bin/python scripts/ui_screenshot.py --url http://127.0.0.1:5001   # a running server
    .venv/bin/python scripts/ui_screenshot.py --link http://127.0.0.1:5000  # print its address

Starts `mlflow ui` on a free port (unless --url names a running server), drives Chromium
headless through Playwright, and writes docs/mlflow-ui.png by default. Needs Chromium at
/usr/bin/chromium (Debian: `apt-get install chromium`; scripts/ci_services.sh installs it) or
CHROMIUM=/path/to/chrome; Playwright's own browser download is not used.

--link prints, instead, the address of the sweep's runs on the UI at that base URL, in the
"Model training" view (what `make ui` prints).
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


class UIError(RuntimeError):
    """The UI did not show what it should; the message says what was missing."""


@dataclass(frozen=True)
class Row:
    run_id: str
    name: str
    cells: dict[str, str]  # metric name -> the text the UI shows


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
    if not Path(CHROMIUM).is_file():
        raise UIError(
            f"no Chromium at {CHROMIUM}: `apt-get install chromium` "
            "(scripts/ci_services.sh), or set CHROMIUM to a Chrome/Chromium binary"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            page.set_default_timeout(30_000)
            page.goto(runs_page(base_url, experiment_id), wait_until="domcontentloaded")
            parent = page.locator(f'[role=row][row-id="{parent_run_id}"]').first
            parent.wait_for()
            _close_assistant(page)
            _expand(page, parent_run_id)
            _show_columns(page, metrics)
            rows = _read_rows(page, metrics)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            browser.close()
    return rows


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


def _sweep(store_uri: str) -> tuple[str, str]:
    """(experiment id, parent run id) of the newest finished sweep in the store."""
    from mlflow.tracking import MlflowClient

    # MLflow would create an empty store where there is none.
    if store_uri.startswith("sqlite:///") and not Path(store_uri[len("sqlite:///") :]).is_file():
        raise UIError(f"{store_uri}: no such store; run the pipeline first (make run)")
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
    parser.add_argument("--out", type=Path, default=ROOT / "docs/mlflow-ui.png")
    parser.add_argument(
        "--link",
        metavar="BASE_URL",
        help="print the sweep's address on the UI at BASE_URL (Model training view) and exit",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
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


if __name__ == "__main__":
    main()
