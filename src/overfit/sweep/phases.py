"""Where a sweep's time goes: seconds per phase, logged as `seconds_*` metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping


class Phases(dict[str, float]):
    """Seconds spent per phase (import, build, train, save, plot, log), summed over calls."""

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 3)

    def add(self, other: Mapping[str, float]) -> None:
        for name, seconds in other.items():
            self[name] = round(self.get(name, 0.0) + seconds, 3)
