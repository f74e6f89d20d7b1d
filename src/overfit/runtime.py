"""What a pipeline process holds while it runs: the project folder, and the signals it was sent.

Ctrl-C and SIGTERM are recorded when they arrive and acted on at the next safe point
(`checkpoint`), never raised inside whatever code happens to be running: an exception raised
from a signal handler can land in a garbage-collection callback (and be dropped) or half-way
through a library's bookkeeping.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TypeVar

from overfit.config import ConfigError, exit_on_config_error

T = TypeVar("T")

# A pipeline process's output is what a user can act on: TensorFlow's C++ start-up lines
# (CPU features, oneDNN) and MLflow's download progress bars in a log file are not. A user's own
# setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not sys.stderr.isatty():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

HANDLED = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []


@contextlib.contextmanager
def tensorflow_quiet() -> Iterator[None]:
    """Within the block (an import of TensorFlow or Keras), the process's stderr goes to
    /dev/null: TensorFlow prints its C++ start-up lines (oneDNN, absl) as it loads, before it
    reads TF_CPP_MIN_LOG_LEVEL. A failing import still raises, and its traceback shows after."""
    if "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM reached a safe point. A BaseException, as KeyboardInterrupt is, so
    that no `except Exception` swallows it."""

    def __init__(self, signum: int, after_the_work: bool = False) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        # It came once the work was done, after the last safe point: nothing was stopped.
        self.after_the_work = after_the_work

    @property
    def exit_status(self) -> int:
        """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


@contextlib.contextmanager
def signals_recorded() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are recorded for `checkpoint`, not raised. One
    that came after the block's last safe point is raised as it ends (Interrupted, with
    `after_the_work`): the process still exits 128 + its number."""
    previous = {signum: signal.signal(signum, _record) for signum in HANDLED}
    _received.clear()
    try:
        yield
        late = received()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()
    if late is not None:
        raise Interrupted(late, after_the_work=True)


def records_signals() -> bool:
    """Whether SIGINT and SIGTERM are being recorded (inside `signals_recorded`) rather than
    handled as the process otherwise would.

    The one hook tests have into a stage's signal handling: they send a signal at a chosen
    moment of a stage only while this holds (outside the block pytest's own handler would stop
    the test session), and check it no longer holds once the stage has returned."""
    return all(signal.getsignal(signum) is _record for signum in HANDLED)


def received() -> int | None:
    """The first signal recorded since the block began, if any."""
    return _received[0] if _received else None


def checkpoint() -> None:
    """A safe point: stop here if Ctrl-C or SIGTERM has arrived."""
    if _received:
        raise Interrupted(_received[0])


_collection_skipped_at_exit: list[bool] = []


@contextlib.contextmanager
def stage_process() -> Iterator[None]:
    """A stage's work: automatic garbage collection paused while it runs (on again after), and
    none when the process exits.

    A stage's objects (TensorFlow, Keras models, figures) mostly live until it ends, yet every
    full collection walks them all. Measured: 2.3 s of the train stage's 38 s, 0.9 s of
    evaluate's 8.5 s and 1.0 s of plot's 4.4 s, for 25, 32 and 85 MB of garbage left uncollected.
    The interpreter's last collection at exit cost 0.2 to 1.9 s more per stage, to free memory
    the OS takes back anyway; files and stores are closed before exit.
    """
    if not _collection_skipped_at_exit:
        atexit.register(gc.freeze)  # atexit runs before the final collection; frozen: skipped
        _collection_skipped_at_exit.append(True)
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_stage(work: Callable[[], T], failures: tuple[type[Exception], ...]) -> T:
    """A simple stage's work, with its refusals as one line each: a bad setting exits 2, one of
    `failures` 1, Ctrl-C 130 (its files are written whole or not at all: nothing to clean up)."""
    try:
        with stage_process():
            return work()
    except ConfigError as error:
        exit_on_config_error(error)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except failures as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as error:  # a folder read-only, a full disk, a folder where a file goes
        print(f"error: {os_failure(error)}", file=sys.stderr)
        raise SystemExit(1) from None


def os_failure(error: OSError) -> str:
    """A failed file operation as one line: the path (paths) and the OS's reason."""
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    reason = error.strerror or str(error) or type(error).__name__
    return f"{paths}: {reason}" if paths else reason


@contextlib.contextmanager
def located(path: Path) -> Iterator[None]:
    """An OSError inside the block that names no file is raised again naming `path`."""
    try:
        yield
    except OSError as error:
        if error.filename is not None or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None


class FolderBusy(RuntimeError):
    """Another process holds the project folder's lock; the message names its pid."""


@contextlib.contextmanager
def project_lock(lock_file: Path, holder: str = "pipeline process") -> Iterator[None]:
    """Hold the project folder for this process: a second pipeline (or `holder`: what else
    takes this lock) in the same folder stops at once. The lock dies with its process (flock),
    so a lock left by a killed process is taken over by the next one; the file only says whose
    it was."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            raise FolderBusy(
                f"another {holder} (pid {pid}) is running in {lock_file.parent}; "
                "wait for it to end, or stop it"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
