"""`python -m overfit.commands.params [override ...]` (make params): compose conf/ with the
overrides into params.yaml, checked before it is written as the train stage checks it: every job
of the sweep composed and checked, and the cross-validation folds against the training rows the
data settings draw."""

from __future__ import annotations

import sys
from pathlib import Path

from overfit import layout
from overfit.artifacts import write_text
from overfit.config import (
    ConfigError,
    compose_params,
    exit_on_config_error,
    project_root,
)
from overfit.core.data import drawn_split
from overfit.core.selection import check_folds
from overfit.sweep.plan import plan_sweep


def check_as_train(root: Path, text: str) -> None:
    """The checks the train stage makes before it trains; ConfigError at the first that fails."""
    plan = plan_sweep(root, text, [])
    for data, select in {(config.data, config.select) for config in plan.configs}:
        check_folds(drawn_split(data)[0].y, select)


def main(argv: list[str] | None = None) -> None:
    try:
        root = project_root()
        text = compose_params(root, argv if argv is not None else sys.argv[1:])
        check_as_train(root, text)
    except ConfigError as error:
        exit_on_config_error(error)
    write_text(root / layout.PARAMS, text)
    print(f"wrote {root / layout.PARAMS}")


if __name__ == "__main__":
    main()
