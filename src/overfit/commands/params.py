"""`python -m overfit.commands.params [override ...]` (make params): compose conf/ with the
overrides into params.yaml, checked before it is written."""

from __future__ import annotations

import sys

import yaml

from overfit import layout
from overfit.artifacts import write_text
from overfit.config import (
    ConfigError,
    compose_params,
    exit_on_config_error,
    parse_config,
    project_root,
)


def main(argv: list[str] | None = None) -> None:
    try:
        root = project_root()
        text = compose_params(root, argv if argv is not None else sys.argv[1:])
        parse_config(yaml.safe_load(text))
    except ConfigError as error:
        exit_on_config_error(error)
    write_text(root / layout.PARAMS, text)
    print(f"wrote {root / layout.PARAMS}")


if __name__ == "__main__":
    main()
