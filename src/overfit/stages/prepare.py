"""Stages `generate` and `split`: the data set's points and a fresh draw, then the article's split.

`python -m overfit.stages.prepare generate` writes data/raw/{points,fresh}.csv (data.name's
generator);
`python -m overfit.stages.prepare split` writes data/split/{train,test}.csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

from overfit import layout
from overfit.config import DataConfig, load_params, project_root
from overfit.core.data import DataError, make_points, read_points, split_points, write_points
from overfit.runtime import run_stage


def generate(root: Path, data: DataConfig) -> None:
    points = make_points(data.name, data.n_samples, data.noise, data.random_state, data.factor)
    fresh = make_points(
        data.name, data.fresh_samples, data.noise, data.fresh_random_state, data.factor
    )
    write_points(root / layout.POINTS_CSV, points)
    write_points(root / layout.FRESH_CSV, fresh)


def split(root: Path, data: DataConfig) -> None:
    points = read_points(root / layout.POINTS_CSV, expected_rows=data.n_samples)
    train, test = split_points(points, data.n_train)
    write_points(root / layout.TRAIN_CSV, train)
    write_points(root / layout.TEST_CSV, test)


STAGES = {"generate": generate, "split": split}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in STAGES:
        print(f"usage: python -m overfit.stages.prepare {{{','.join(STAGES)}}}", file=sys.stderr)
        raise SystemExit(2)

    def work() -> None:
        root = project_root()
        STAGES[args[0]](root, load_params(root).data)

    run_stage(work, (DataError,))


if __name__ == "__main__":
    main()
