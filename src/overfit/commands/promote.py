"""Promote the registered candidate to champion when the gate's rules hold against the
champion's recorded figures; or roll the champion back.

    python -m overfit.commands.promote          # alias candidate -> champion, if the rules hold
    python -m overfit.commands.promote --version 3  # a given version instead of the candidate
    python -m overfit.commands.promote --rollback   # champion back to the version it replaced

The rules are the CI gate's rules on the selected configuration against a base (`gate` in
params.yaml, core/rules.py), with the champion as the base: the candidate's cross-validation,
test and fresh accuracy may drop at most the tolerances below the champion's. The figures are
the ones the register stage recorded on each version's tags, read as the report type the gate
reads (a missing, non-numeric or out-of-range figure is refused, never skipped). The first
candidate becomes champion. The champion it replaces keeps alias `previous`; every move is
written on the versions it touches (when, from which commit). Exit 0: moved (or nothing to
move); 1: refused, the failed rules printed, or another move holds the registry lock of this
folder (`.overfit-registry.lock`: one move at a time, the second stops at once), or the
aliases were moved meanwhile from elsewhere; 2: nothing to promote (no such model, version or
alias) or a version's figures unreadable, nothing changed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from overfit import layout, runtime
from overfit.artifacts import ArtifactError
from overfit.config import (
    ConfigError,
    GateConfig,
    exit_on_config_error,
    load_params,
    project_root,
)
from overfit.core.rules import Pick, Rule, drop_rules, version_pick
from overfit.tracking import lineage
from overfit.tracking.registry import version_by_alias
from overfit.tracking.store import StoreError, existing_store, store_failures, tracking_uri

CANDIDATE, CHAMPION, PREVIOUS = "candidate", "champion", "previous"
HISTORY_TAG = "overfit.history"
SIDES = ("the champion", "the candidate")


class PromotionError(RuntimeError):
    """Nothing to promote or roll back, or a version's figures cannot be read; the message
    says what."""


class MovedMeanwhile(RuntimeError):
    """The aliases are not where this move set them: another move, from another folder, ran
    at the same time."""


def pick_of(name: str, version: Any) -> Pick:
    """The selection the register stage recorded on a version's tags; PromotionError if a
    figure is missing, not a number, or out of range."""
    try:
        return version_pick(version.tags, f"{name} version {version.version}")
    except ArtifactError as error:
        raise PromotionError(f"{error}; nothing changed") from None


def check(candidate: Pick, champion: Pick, gate: GateConfig) -> list[Rule]:
    """The gate's rules on the selected model against a base, the champion as the base."""
    return drop_rules(champion, candidate, gate, sides=SIDES)


def rule_line(rule: Rule) -> str:
    """One rule's verdict, as promote prints it."""
    if rule.skipped:
        return f"skip  {rule.name}: {rule.skipped}"
    verdict = "pass" if rule.passed else "FAIL"
    return f"{verdict}  {rule.name}: {rule.base} -> {rule.new} ({rule.tolerance})"


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
    found = version_by_alias(mlflow, name, alias)
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


def check_aliases(mlflow: Any, name: str, expected: dict[str, str | None]) -> None:
    """MovedMeanwhile unless each alias points where this move set it (None: unset)."""
    found = {k: str(v) for k, v in mlflow.get_registered_model(name).aliases.items()}
    wrong = {alias: found.get(alias) for alias, version in expected.items()}
    if wrong != expected:
        now = ", ".join(f"{alias} {v or 'unset'}" for alias, v in wrong.items())
        raise MovedMeanwhile(
            f"{name} moved meanwhile (a promotion or rollback elsewhere): {now}; check its "
            "versions' overfit.history tags before moving it again"
        )


def promote(
    mlflow: Any, name: str, version: str | None, gate: GateConfig, commit: str
) -> tuple[str, list[Rule]]:
    """Move `champion` to the candidate (or `version`) if the rules hold; what happened."""
    candidate = version_of(mlflow, name, version, CANDIDATE)
    champion = version_by_alias(mlflow, name, CHAMPION)
    if champion is not None and champion.version == candidate.version:
        return f"version {candidate.version} is already the champion: nothing to do", []
    # Read before anything moves: a first candidate with broken figures is refused too.
    new = pick_of(name, candidate)
    rules = [] if champion is None else check(new, pick_of(name, champion), gate)
    if not all(rule.passed for rule in rules):
        return f"version {candidate.version} stays a candidate", rules
    if champion is not None:
        mlflow.set_registered_model_alias(name, PREVIOUS, champion.version)
        record_move(mlflow, name, champion, f"previous (replaced by {candidate.version})", commit)
    mlflow.set_registered_model_alias(name, CHAMPION, candidate.version)
    replaced = "first champion" if champion is None else f"over {champion.version}"
    record_move(mlflow, name, candidate, f"champion ({replaced})", commit)
    moved = {CHAMPION: str(candidate.version)}
    check_aliases(
        mlflow, name, moved if champion is None else moved | {PREVIOUS: str(champion.version)}
    )
    return f"version {candidate.version} is the champion ({replaced})", rules


def rollback(mlflow: Any, name: str, commit: str) -> str:
    """Move `champion` back to `previous`; `previous` is then unset."""
    champion = version_of(mlflow, name, None, CHAMPION)
    previous = version_by_alias(mlflow, name, PREVIOUS)
    if previous is None:
        raise PromotionError(f"{name} has no previous champion to roll back to")
    mlflow.set_registered_model_alias(name, CHAMPION, previous.version)
    mlflow.delete_registered_model_alias(name, PREVIOUS)
    record_move(mlflow, name, champion, f"rolled back (champion again: {previous.version})", commit)
    record_move(mlflow, name, previous, f"champion (rolled back from {champion.version})", commit)
    check_aliases(mlflow, name, {CHAMPION: str(previous.version), PREVIOUS: None})
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
        mlflow = existing_store(root, config.tracking)
        # One move at a time: a move reads the aliases, then sets them and the history.
        with (
            runtime.project_lock(root / layout.REGISTRY_LOCK, "promotion or rollback"),
            store_failures(tracking_uri(root, config.tracking)),
        ):
            if args.rollback:
                print(rollback(mlflow, name, commit))
                return
            outcome, rules = promote(mlflow, name, args.version, config.gate, commit)
    except ConfigError as error:  # the tracking settings: a server URI unset or malformed
        exit_on_config_error(error)
    except (PromotionError, StoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (runtime.FolderBusy, MovedMeanwhile) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    for rule in rules:
        print(rule_line(rule))
    print(outcome)
    if not all(rule.passed for rule in rules):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
