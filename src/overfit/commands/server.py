"""A shared MLflow tracking server: PostgreSQL for runs, served artifacts, one command each way.

    python -m overfit.commands.server start   # (make server) PostgreSQL, then mlflow server
    python -m overfit.commands.server status
    python -m overfit.commands.server stop    # (make server-stop) stop both; the data stays

Everything lives in one folder, `.mlflow-server/` at the project root by default: the PostgreSQL
cluster (postgres/data), the served artifacts (artifacts/), logs, pid file and a pgpass file.
The database password is generated once, kept only in that pgpass file (mode 600) and read by
libpq from there: it is never on a command line, in the store URI, or in any log.

Settings, from the environment:

    MLFLOW_SERVER_PORT             the tracking server's port (default 5001)
    MLFLOW_SERVER_PG_PORT          PostgreSQL's port (default 5433, beside a system cluster's 5432)
    MLFLOW_SERVER_DIR              the state folder (default <project>/.mlflow-server)
    MLFLOW_SERVER_WORKERS          server worker processes (default 2)
    MLFLOW_SERVER_PG_BIN           PostgreSQL's bin folder (default /usr/lib/postgresql/N/bin)
    MLFLOW_ARTIFACTS_DESTINATION   where served artifacts go (default <state>/artifacts), e.g.
                                   s3://bucket/path with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
                                   (and MLFLOW_S3_ENDPOINT_URL for MinIO) set for the server
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from overfit import layout

HOST = "127.0.0.1"
DEFAULT_PORT = 5001
DEFAULT_PG_PORT = 5433
DEFAULT_WORKERS = 2
DB_NAME = "mlflow"
DB_USER = "mlflow"
DB_SUPERUSER = "postgres"
# PostgreSQL refuses to run as root: as root, its programs run as this (Debian's) user.
PG_OS_USER = "postgres"
START_TIMEOUT = 120.0


class ServerError(RuntimeError):
    """Something that stops the server from starting; the message says what to do."""


@dataclass(frozen=True)
class Settings:
    state: Path
    port: int
    pg_port: int
    workers: int
    artifacts: str
    pg_bin: Path | None

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def store_uri(self) -> str:
        # No password: libpq reads it from PGPASSFILE. psycopg2 named, since SQLAlchemy 2.1's
        # default PostgreSQL driver is psycopg 3, which is not installed.
        return f"postgresql+psycopg2://{DB_USER}@{HOST}:{self.pg_port}/{DB_NAME}"

    @property
    def pg_dir(self) -> Path:
        return self.state / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.pg_dir / "data"

    @property
    def pg_log(self) -> Path:
        return self.pg_dir / "server.log"

    @property
    def pgpass(self) -> Path:
        return self.state / "pgpass"

    @property
    def pid_file(self) -> Path:
        return self.state / "mlflow.pid"

    @property
    def log(self) -> Path:
        return self.state / "mlflow.log"


def settings(root: Path, env: Mapping[str, str] = os.environ) -> Settings:
    state = Path(env.get("MLFLOW_SERVER_DIR") or root / layout.SERVER_DIR).resolve()
    pg_bin = env.get("MLFLOW_SERVER_PG_BIN")
    return Settings(
        state=state,
        port=_number(env, "MLFLOW_SERVER_PORT", DEFAULT_PORT, 65535),
        pg_port=_number(env, "MLFLOW_SERVER_PG_PORT", DEFAULT_PG_PORT, 65535),
        workers=_number(env, "MLFLOW_SERVER_WORKERS", DEFAULT_WORKERS, 64),
        artifacts=env.get("MLFLOW_ARTIFACTS_DESTINATION") or str(state / "artifacts"),
        pg_bin=Path(pg_bin) if pg_bin else None,
    )


def _number(env: Mapping[str, str], name: str, default: int, most: int) -> int:
    text = env.get(name) or str(default)
    if not text.isdigit() or not 0 < int(text) <= most:
        raise ServerError(f"{name}: must be a whole number from 1 to {most}, got {text!r}")
    return int(text)


# --- PostgreSQL ------------------------------------------------------------------------------


def postgres_bin(s: Settings) -> Path:
    """The folder holding initdb and pg_ctl: Debian's newest, else whatever PATH has."""
    candidates = [s.pg_bin] if s.pg_bin else []
    if not s.pg_bin:
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        )
        candidates += reversed(found)
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    where = s.pg_bin or "/usr/lib/postgresql/*/bin or PATH"
    raise ServerError(
        f"PostgreSQL is not installed (no initdb and pg_ctl in {where}): "
        "run `apt-get install postgresql` (scripts/ci_services.sh does it)"
    )


def _as_pg_user() -> list[str]:
    """The prefix that runs a PostgreSQL program as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise ServerError(
            f"running as root, but there is no {PG_OS_USER!r} user for PostgreSQL to run as: "
            "`apt-get install postgresql` creates it"
        ) from None
    return ["runuser", "-u", PG_OS_USER, "--"]


def _give_to_pg_user(path: Path) -> None:
    if _as_pg_user():  # root: PostgreSQL runs as its own user, which must exist
        shutil.chown(path, PG_OS_USER, PG_OS_USER)


def _pg_running(s: Settings, bin_dir: Path) -> bool:
    if not (s.pg_data / "PG_VERSION").is_file():
        return False
    status = subprocess.run(
        [*_as_pg_user(), str(bin_dir / "pg_ctl"), "-D", str(s.pg_data), "status"],
        capture_output=True,
        text=True,
    )
    return status.returncode == 0


def init_cluster(s: Settings, bin_dir: Path) -> None:
    """A new cluster: password login only, over TCP on 127.0.0.1 only (no Unix socket)."""
    s.state.mkdir(parents=True, exist_ok=True)
    s.pg_dir.mkdir(exist_ok=True)
    _give_to_pg_user(s.pg_dir)
    if os.geteuid() == 0:
        reach = subprocess.run([*_as_pg_user(), "test", "-w", str(s.pg_dir)], capture_output=True)
        if reach.returncode != 0:
            raise ServerError(
                f"the {PG_OS_USER} user cannot write to {s.pg_dir} (a parent folder is closed "
                "to other users): set MLFLOW_SERVER_DIR to a folder every user can traverse"
            )
    super_pw, user_pw = secrets.token_hex(24), secrets.token_hex(24)
    pwfile = s.pg_dir / "initdb.pw"
    with _private_file(pwfile) as handle:
        handle.write(super_pw + "\n")
    _give_to_pg_user(pwfile)
    try:
        _check(
            [
                *_as_pg_user(),
                str(bin_dir / "initdb"),
                "-D",
                str(s.pg_data),
                "-U",
                DB_SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ],
            "initdb",
        )
    finally:
        pwfile.unlink(missing_ok=True)
    # libpq picks the line by host, port, database and user; any port, so a new port still works.
    with _private_file(s.pgpass) as handle:
        handle.write(f"{HOST}:*:*:{DB_SUPERUSER}:{super_pw}\n")
        handle.write(f"{HOST}:*:{DB_NAME}:{DB_USER}:{user_pw}\n")


def start_postgres(s: Settings, bin_dir: Path) -> None:
    _require_free(s.pg_port, "MLFLOW_SERVER_PG_PORT")
    options = f"-c listen_addresses={HOST} -p {s.pg_port} -c unix_socket_directories=''"
    command = [*_as_pg_user(), str(bin_dir / "pg_ctl"), "-D", str(s.pg_data)]
    command += ["-l", str(s.pg_log), "-o", options, "-w", "-t", "60", "start"]
    if subprocess.run(command, capture_output=True, text=True).returncode != 0:
        raise ServerError(f"PostgreSQL did not start:\n{_tail(s.pg_log)}")


def create_database(s: Settings, bin_dir: Path) -> None:
    """The mlflow role and database, once; the password goes in on stdin, never on argv."""
    if not _psql(s, bin_dir, f"SELECT 1 FROM pg_roles WHERE rolname = '{DB_USER}'").strip():
        password = _pgpass_password(s, DB_USER)
        # Keep the statement, and so the password, out of the server log even if it fails.
        _psql(
            s,
            bin_dir,
            "SET log_statement = 'none'; SET log_min_error_statement = 'panic'; "
            f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{password}'",
            hide=password,
        )
    if not _psql(s, bin_dir, f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'").strip():
        _psql(s, bin_dir, f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")


def _psql(s: Settings, bin_dir: Path, sql: str, hide: str | None = None) -> str:
    result = subprocess.run(
        [str(bin_dir / "psql"), "-h", HOST, "-p", str(s.pg_port), "-U", DB_SUPERUSER]
        + ["-d", "postgres", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"],
        input=sql + ";\n",
        env=_pg_env(s),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        # psql quotes the failing statement back, password included.
        message = result.stderr.strip()
        raise ServerError(f"psql failed: {message.replace(hide, '***') if hide else message}")
    return result.stdout


def _pgpass_password(s: Settings, user: str) -> str:
    for line in s.pgpass.read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if len(fields) == 5 and fields[3] == user:
            return fields[4]
    raise ServerError(f"{s.pgpass}: no password for {user}; remove {s.state} to start afresh")


def stop_postgres(s: Settings, bin_dir: Path) -> bool:
    if not _pg_running(s, bin_dir):
        return False
    _check(
        [*_as_pg_user(), str(bin_dir / "pg_ctl"), "-D", str(s.pg_data), "-m", "fast", "-w"]
        + ["stop"],
        "pg_ctl stop",
    )
    return True


def _pg_env(s: Settings) -> dict[str, str]:
    return {**os.environ, "PGPASSFILE": str(s.pgpass), "PGCONNECT_TIMEOUT": "10"}


# --- the MLflow server -----------------------------------------------------------------------


def server_command(s: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        s.store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        s.artifacts,
        "--host",
        HOST,
        "--port",
        str(s.port),
        "--workers",
        str(s.workers),
    ]


def start_mlflow(s: Settings) -> None:
    _require_free(s.port, "MLFLOW_SERVER_PORT")
    if "://" not in s.artifacts:
        Path(s.artifacts).mkdir(parents=True, exist_ok=True)
    env = _pg_env(s)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # The GenAI job runner: six more processes and ~1.5 GB that experiment tracking never uses.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with s.log.open("ab") as log:
        # Its own session: the server and its workers stop together, and outlive this command.
        process = subprocess.Popen(
            server_command(s),
            cwd=s.state,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    s.pid_file.write_text(f"{process.pid}\n", encoding="utf-8")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            s.pid_file.unlink(missing_ok=True)
            raise ServerError(f"mlflow server exited with {process.returncode}:\n{_tail(s.log)}")
        if healthy(s.uri):
            return
        time.sleep(0.5)
    _stop_group(process.pid)
    s.pid_file.unlink(missing_ok=True)
    raise ServerError(f"mlflow server did not answer in {START_TIMEOUT:.0f} s:\n{_tail(s.log)}")


def healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(uri + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def mlflow_pid(s: Settings) -> int | None:
    """The server's pid, if the pid file names a live mlflow process (not a reused pid)."""
    try:
        pid = int(s.pid_file.read_text(encoding="utf-8"))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"mlflow" in cmdline and b"server" in cmdline else None


def stop_mlflow(s: Settings) -> bool:
    pid = mlflow_pid(s)
    s.pid_file.unlink(missing_ok=True)
    if pid is None:
        return False
    _stop_group(pid)
    return True


def _stop_group(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the server's process group (uvicorn and its workers), SIGKILL what lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        # Reap it if it is our child (a test that started it in this process).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _private_file(path: Path) -> Iterator[TextIO]:
    """A file only its owner can read, created so (not chmod-ed after it was written)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yield handle


def _require_free(port: int, name: str) -> None:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        if probe.connect_ex((HOST, port)) == 0:
            raise ServerError(f"port {port} on {HOST} is already in use: set {name} to another")


def _check(command: Sequence[str], what: str) -> None:
    result = subprocess.run(list(command), capture_output=True, text=True)
    if result.returncode != 0:
        raise ServerError(f"{what} failed ({result.returncode}): {result.stderr.strip()}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# --- commands --------------------------------------------------------------------------------


def start(s: Settings) -> None:
    if mlflow_pid(s) is not None and healthy(s.uri):
        print(f"already running: {s.uri}")
    else:
        bin_dir = postgres_bin(s)
        if not (s.pg_data / "PG_VERSION").is_file():
            init_cluster(s, bin_dir)
            print(f"created a PostgreSQL cluster in {s.pg_data}")
        if not _pg_running(s, bin_dir):
            start_postgres(s, bin_dir)
        create_database(s, bin_dir)
        start_mlflow(s)
        print(f"MLflow tracking server: {s.uri}")
        print(f"  runs      PostgreSQL on {HOST}:{s.pg_port}, database {DB_NAME}")
        print(f"  artifacts {s.artifacts}")
        print(f"  logs      {s.log}, {s.pg_log}")
    print("Track the pipeline there:")
    print(f"  export MLFLOW_TRACKING_URI={s.uri}")
    print("  python -m overfit.commands.params tracking=server && dvc repro")
    print("Stop it: make server-stop")


def stop(s: Settings) -> None:
    stopped_mlflow = stop_mlflow(s)
    print("stopped mlflow server" if stopped_mlflow else "mlflow server was not running")
    try:
        bin_dir = postgres_bin(s)
    except ServerError:
        return
    print("stopped PostgreSQL" if stop_postgres(s, bin_dir) else "PostgreSQL was not running")


def status(s: Settings) -> bool:
    up = mlflow_pid(s) is not None and healthy(s.uri)
    print(f"mlflow server: {'up at ' + s.uri if up else 'down'}")
    try:
        pg_up = _pg_running(s, postgres_bin(s))
    except ServerError:
        pg_up = False
    print(f"PostgreSQL:    {'up on port ' + str(s.pg_port) if pg_up else 'down'}")
    return up and pg_up


USAGE = "usage: python -m overfit.commands.server start|stop|status"


def main(argv: Sequence[str] | None = None) -> None:
    from overfit.config import ConfigError, project_root

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in ("start", "stop", "status"):
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    try:
        s = settings(project_root())
        if args[0] == "start":
            start(s)
        elif args[0] == "stop":
            stop(s)
        elif not status(s):
            raise SystemExit(1)
    except (ServerError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
