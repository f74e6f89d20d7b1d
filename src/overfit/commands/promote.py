"""Promote the registered candidate to champion when the gate's rules hold against the
champion's recorded figures; or roll the champion back.

    python -m overfit.commands.promote          # alias candidate -> champion, if the rules hold
    python -m overfit.commands.promote --version 3  # a given version instead of the candidate
    python -m overfit.commands.promote --rollback   # champion back to the version it replaced

The rules are the CI gate's rules on the selected configuration against a base (`gate` in
params.yaml), with the champion as the base: the candidate's cross-validation, test and fresh
accuracy may drop at most the tolerances below the champion's. The figures are the ones the
register stage recorded on each version. The first candidate becomes champion.
The champion it replaces keeps alias `previous`; every move is written on the versions it
touches (when, from which commit). Exit 0: moved (or nothing to move); 1: refused, the failed
rules printed; 2: nothing to promote (no such model, version or alias), nothing changed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overfit import tracking
from overfit.config import (
    ConfigError,
    GateConfig,
    exit_on_config_error,
    load_params,
    project_root,
)
from overfit.tracking import lineage

CANDIDATE, CHAMPION, PREVIOUS = "candidate", "champion", "previous"
HISTORY_TAG = "overfit.history"
# metrics.json rounds figures to 6 decimals: a drop of exactly the tolerance must pass.
ROUNDING = 1e-6


class PromotionError(RuntimeError):
    """Nothing to promote or roll back; the message says what is missing."""


@dataclass(frozen=True)
class Rule:
    name: str
    holds: bool
    text: str


def figures(version: Any) -> dict[str, float | None]:
    """The figures the register stage recorded on a version (None where it has none)."""

    def number(key: str) -> float | None:
        value = version.tags.get(key, "")
        return float(value) if value else None

    return {k: number(k) for k in ("cv_acc", "test_acc", "fresh_acc", "baseline_test_acc")}


def check(
    candidate: Mapping[str, float | None], champion: Mapping[str, float | None], gate: GateConfig
) -> list[Rule]:
    """The gate's rules on the selected model against a base, the champion as the base."""
    rules = []
    for key, tolerance in (
        ("cv_acc", gate.selected_cv_drop),
        ("test_acc", gate.selected_test_drop),
        ("fresh_acc", gate.selected_fresh_drop),
    ):
        new, old = candidate[key], champion[key]
        name = f"selected_{key.removesuffix('_acc')}_accuracy"
        if new is None or old is None:
            rules.append(Rule(name, True, f"skipped: no {key} recorded on both versions"))
            continue
        holds = old - new <= tolerance + ROUNDING
        rules.append(Rule(name, holds, f"{old:.4f} -> {new:.4f} (drop at most {tolerance:.4f})"))
    return rules


def version_of(mlflow: Any, name: str, version: str | None, alias: str) -> Any:
    """The version asked for, or the one `alias` points at; PromotionError if there is none."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_registered_model(name)
    except MlflowException:
        raise PromotionError(
            f"no registered model {name!r} in the tracking store; run the pipeline (make run) "
            "or name another with --name"
        ) from None
    if version is not None:
        try:
            return mlflow.get_model_version(name, version)
        except MlflowException:
            raise PromotionError(f"{name} has no version {version!r}") from None
    found = tracking.version_by_alias(mlflow, name, alias)
    if found is None:
        raise PromotionError(f"{name} has no {alias} version; run the pipeline (make run)")
    return found


def record_move(mlflow: Any, name: str, version: Any, event: str, commit: str) -> None:
    """Append one line (when, what, from which commit) to the version's history tag."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = f"{when} {event} (commit {commit})"
    current = mlflow.get_model_version(name, version.version).tags.get(HISTORY_TAG, "")
    mlflow.set_model_version_tag(name, version.version, HISTORY_TAG, f"{current}\n{line}".strip())
    mlflow.set_model_version_tag(name, version.version, "overfit.moved_at", when)
    mlflow.set_model_version_tag(name, version.version, "overfit.moved_from_commit", commit)


def promote(
    mlflow: Any, name: str, version: str | None, gate: GateConfig, commit: str
) -> tuple[str, list[Rule]]:
    """Move `champion` to the candidate (or `version`) if the rules hold; what happened."""
    candidate = version_of(mlflow, name, version, CANDIDATE)
    champion = tracking.version_by_alias(mlflow, name, CHAMPION)
    if champion is not None and champion.version == candidate.version:
        return f"version {candidate.version} is already the champion: nothing to do", []
    rules = [] if champion is None else check(figures(candidate), figures(champion), gate)
    if not all(rule.holds for rule in rules):
        return f"version {candidate.version} stays a candidate", rules
    if champion is not None:
        mlflow.set_registered_model_alias(name, PREVIOUS, champion.version)
        record_move(mlflow, name, champion, f"previous (replaced by {candidate.version})", commit)
    mlflow.set_registered_model_alias(name, CHAMPION, candidate.version)
    replaced = "first champion" if champion is None else f"over {champion.version}"
    record_move(mlflow, name, candidate, f"champion ({replaced})", commit)
    return f"version {candidate.version} is the champion ({replaced})", rules


def rollback(mlflow: Any, name: str, commit: str) -> str:
    """Move `champion` back to `previous`; `previous` is then unset."""
    champion = version_of(mlflow, name, None, CHAMPION)
    previous = tracking.version_by_alias(mlflow, name, PREVIOUS)
    if previous is None:
        raise PromotionError(f"{name} has no previous champion to roll back to")
    mlflow.set_registered_model_alias(name, CHAMPION, previous.version)
    mlflow.delete_registered_model_alias(name, PREVIOUS)
    record_move(mlflow, name, champion, f"rolled back (champion again: {previous.version})", commit)
    record_move(mlflow, name, previous, f"champion (rolled back from {champion.version})", commit)
    return f"version {previous.version} is the champion again (rolled back from {champion.version})"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m overfit.commands.promote", description=__doc__)
    parser.add_argument("--name", help="registered model (default: params.yaml registry.name)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--version", help="promote this version instead of the candidate")
    group.add_argument("--rollback", action="store_true", help="champion back to previous")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    root = project_root()
    try:
        config = load_params(root)
    except ConfigError as error:
        exit_on_config_error(error)
    name = args.name or config.registry.name
    commit = lineage.git_tags(root).get("git.commit", "unknown")
    try:
        mlflow = tracking.existing_store(root, config.tracking)
        if args.rollback:
            print(rollback(mlflow, name, commit))
            return
        outcome, rules = promote(mlflow, name, args.version, config.gate, commit)
    except (PromotionError, tracking.StoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    for rule in rules:
        print(f"{'pass' if rule.holds else 'FAIL'}  {rule.name}: {rule.text}")
    print(outcome)
    if not all(rule.holds for rule in rules):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
