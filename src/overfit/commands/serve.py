"""The registered model behind an alias, served or run on a CSV by MLflow's own commands.

    python -m overfit.commands.serve [--alias champion] [--port N]          # (make serve) REST API
    python -m overfit.commands.serve predict IN.csv OUT.json [--alias ...]  # (make predict) batch

`serve` runs `mlflow models serve` on `models:/<registry.name>@<alias>` on a private port,
behind a guard (overfit.guard) at 127.0.0.1, port `registry.port` (params.yaml), which refuses
oversized bodies (`registry.max_request_kb`), JSON nested too deep and booleans before MLflow
reads them. `predict` runs `mlflow models predict` on a CSV with columns x1, x2 (other columns,
such as `label`, are ignored by MLflow with a warning) and writes {"predictions": [...]}, the
class-1 probability per row. Both run the venv's `mlflow` with the project's tracking store as
tracking and registry URI, and with the local environment (the venv has everything the model
needs). Before starting, a missing store, registered model or alias is one line `error: ...`
and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from overfit import guard
from overfit.config import ConfigError, load_params, project_root
from overfit.core.data import FEATURES
from overfit.tracking.store import (
    StoreError,
    credentials_to_env,
    existing_store,
    redact,
    tracking_uri,
)

HOST = "127.0.0.1"
DEFAULT_ALIAS = "champion"
# What make run registers (alias candidate) and make promote moves (alias champion).
NEXT_STEP = {
    "champion": "run `make run`, then `make promote`",
    "candidate": "run `make run` (its register stage sets it)",
}
EXAMPLE = {"dataframe_split": {"columns": list(FEATURES), "data": [[0.0, 1.0], [1.0, -0.5]]}}


class ServeError(RuntimeError):
    """Nothing to serve yet, or a bad argument; the message says what to do."""


@dataclass(frozen=True)
class Target:
    """The model version an alias points at, and the store that resolves its URI."""

    model_uri: str
    version: str
    store_uri: str


def model_uri(name: str, alias: str) -> str:
    return f"models:/{name}@{alias}"


def mlflow_cli() -> Path:
    """The venv's `mlflow` script, beside this interpreter (not whatever PATH finds first)."""
    path = Path(sys.executable).parent / "mlflow"
    if not path.is_file():
        raise ServeError(f"no mlflow command at {path}: run `make setup`")
    return path


def resolve(root: Path, alias: str) -> Target:
    """The registered model's version behind `alias` in the project's store; ServeError
    naming what is missing (store, model, alias) and how to make it."""
    from mlflow.exceptions import MlflowException

    config = load_params(root)
    name = config.registry.name
    uri = tracking_uri(root, config.tracking)
    step = NEXT_STEP.get(alias, f"set alias {alias!r} on a version of {name}")
    try:
        client = existing_store(root, config.tracking, writes=False)
    except StoreError as error:
        raise ServeError(f"{error}: {step}") from None
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ServeError(f"no registered model {name!r} in {redact(uri)}: {step}") from None
        raise ServeError(f"{redact(uri)}: {str(error).splitlines()[0]}") from None
    version = model.aliases.get(alias)
    if version is None:
        have = ", ".join(f"{a} -> version {v}" for a, v in sorted(model.aliases.items()))
        raise ServeError(
            f"registered model {name!r} has no alias {alias!r} "
            f"({'aliases: ' + have if have else 'no aliases'}): {step}"
        )
    # Credentials of a server URI go to MLflow's own variables, never on a command line.
    return Target(model_uri(name, alias), str(version), credentials_to_env(uri))


def mlflow_env(store_uri: str) -> dict[str, str]:
    """The environment for the mlflow command: models:/ resolved in the project's store, and
    the venv's bin first on PATH, since `mlflow models serve` starts `uvicorn` through a shell
    by name."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = store_uri
    env["MLFLOW_REGISTRY_URI"] = store_uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Nothing a user cannot act on: TensorFlow's start-up lines (the model's code keeps those
    # of its import to itself), MLflow's INFO account of how it starts, progress bars in a log.
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if not sys.stderr.isatty():
        env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return env


def require_free(port: int) -> None:
    """Refuse a busy port now: MLflow would find out only after loading the model."""
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise ServeError(
                f"port {port} on {HOST} is in use: stop what listens there, or pass --port "
                "(or set registry.port in params.yaml)"
            ) from None


def curl_example(url: str) -> str:
    body = json.dumps(EXAMPLE)
    return f"curl -s {url} -H 'Content-Type: application/json' -d '{body}'"


def serve_command(target: Target, port: int) -> list[str]:
    return [
        str(mlflow_cli()),
        *("models", "serve", "-m", target.model_uri, "--env-manager", "local"),
        *("-h", HOST, "-p", str(port)),
    ]


def serve(root: Path, alias: str, port: int | None) -> NoReturn:
    """The guard (overfit.guard) on `port`, in front of `mlflow models serve` on a private port,
    until Ctrl-C or SIGTERM (exit 130 or 143) or MLflow's server ends (its exit status). Until
    MLflow's server is up, the guard answers 502."""
    registry = load_params(root).registry
    port = port or registry.port
    target = resolve(root, alias)
    require_free(port)
    backend = free_port()
    stopped: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: stopped.append(signum))
    guard.start(HOST, port, backend, registry.max_request_kb * 1024)
    url = f"http://{HOST}:{port}/invocations"
    print(f"serving {target.model_uri} (version {target.version}) at {url}", flush=True)
    print(f"try: {curl_example(url)}", flush=True)
    process = subprocess.Popen(serve_command(target, backend), env=mlflow_env(target.store_uri))
    try:
        while process.poll() is None and not stopped:
            time.sleep(0.2)
        raise SystemExit(128 + stopped[0] if stopped else process.returncode)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def free_port() -> int:
    """A port nothing listens on now, for MLflow's server behind the guard."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def check_input(path: Path) -> None:
    """A readable CSV (a byte-order mark allowed) whose header names x1 and x2, each row with
    finite numbers there; or one line naming the file, the line and what is wrong."""
    if path.is_dir():
        raise ServeError(f"{path}: a folder, not a CSV with columns x1, x2")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = csv.reader(handle)
            header = next(rows, [])
            missing = [name for name in FEATURES if name not in header]
            if missing:
                raise ServeError(f"{path}: no column {', '.join(missing)} in its header line")
            columns = [header.index(name) for name in FEATURES]
            for line, row in enumerate(rows, start=2):
                for name, column in zip(FEATURES, columns, strict=True):
                    value = row[column] if column < len(row) else ""
                    if not _finite(value):
                        raise ServeError(
                            f"{path}, line {line}: {name} must be a finite number, got {value!r}"
                        )
    except FileNotFoundError:
        raise ServeError(f"{path}: no such file (a CSV with columns x1, x2)") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ServeError(f"{path}: cannot read it ({error})") from None


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def check_output(source: Path, out: Path) -> None:
    """The JSON file to write: neither the input nor a folder."""
    if out.is_dir():
        raise ServeError(f"{out}: a folder; name the JSON file to write")
    if out.resolve() == source.resolve():
        raise ServeError(f"{out}: the input itself; name another file for the predictions")


def predict(root: Path, alias: str, source: Path, out: Path) -> int:
    """`mlflow models predict` on a CSV; its exit status. The predictions are written to a
    file beside `out` and renamed into place when whole."""
    check_input(source)
    check_output(source, out)
    target = resolve(root, alias)
    out.parent.mkdir(parents=True, exist_ok=True)
    draft = out.with_name(f".{out.name}.draft")
    command = [
        str(mlflow_cli()),
        *("models", "predict", "-m", target.model_uri, "--env-manager", "local"),
        *("-i", str(source), "-o", str(draft), "-t", "csv"),
    ]
    print(f"predicting {source} with {target.model_uri} (version {target.version})", flush=True)
    try:
        status = subprocess.run(command, env=mlflow_env(target.store_uri)).returncode
        if status == 0:
            rows = len(json.loads(draft.read_text(encoding="utf-8"))["predictions"])
            os.replace(draft, out)
            print(f"wrote {out}: {rows} class-1 probabilities (JSON, key 'predictions')")
    finally:
        draft.unlink(missing_ok=True)
    return status


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"a port number from 1 to 65535, got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    serving = argparse.ArgumentParser(
        prog="python -m overfit.commands.serve",
        description="Serve models:/<registry.name>@<alias> on 127.0.0.1 "
        "(`predict IN.csv OUT.json` runs it on a CSV instead).",
    )
    serving.add_argument("--alias", default=DEFAULT_ALIAS, help="default: %(default)s")
    serving.add_argument("--port", type=port_number, help="default: registry.port")
    return serving


def predict_parser() -> argparse.ArgumentParser:
    batch = argparse.ArgumentParser(
        prog="python -m overfit.commands.serve predict",
        description="Class-1 probabilities for a CSV with columns x1, x2, as JSON "
        '{"predictions": [...]}, by `mlflow models predict`.',
    )
    batch.add_argument("input", type=Path, help="CSV with columns x1, x2 (others are ignored)")
    batch.add_argument("output", type=Path, help="JSON file to write")
    batch.add_argument("--alias", default=DEFAULT_ALIAS, help="default: %(default)s")
    return batch


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        root = project_root()
        if args[:1] == ["predict"]:
            options = predict_parser().parse_args(args[1:])
            status = predict(root, options.alias, options.input, options.output)
            raise SystemExit(status)
        options = parser().parse_args(args)
        serve(root, options.alias, options.port)
    except (ConfigError, ServeError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
