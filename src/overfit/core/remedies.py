"""What a configuration is, pure: the remedy it applies (its family and setting) and its name.

Families: the penalties (l1, l2, l1_l2, by strength), dropout (by rate), early stopping (by
patience), max_norm (by max_value), unit_norm, Gaussian noise (by standard deviation) and the
activity penalties (activity_l1, activity_l2, activity_l1_l2, by strength); `none` is the
unregularized baseline. A
configuration that combines remedies (by hand) belongs to the family of its first one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TEST_WATCH = "_test"  # a run name's mark: early stopping watched the test set


@dataclass(frozen=True)
class Family:
    """How a family's setting reads: its name on a figure's axis, its scale, and whether a
    larger setting regularizes more (a rate, a strength) or less (a patience, a norm)."""

    label: str
    axis: str
    log: bool
    larger_is_stronger: bool


FAMILIES: dict[str, Family] = {
    "l1": Family("L1 penalty", "strength", True, True),
    "l2": Family("L2 penalty", "strength", True, True),
    "l1_l2": Family("L1 + L2 penalty", "strength", True, True),
    "dropout": Family("dropout", "rate", False, True),
    "early_stopping": Family("early stopping", "patience (epochs)", True, False),
    "max_norm": Family("max-norm constraint", "max norm", True, False),
    "unit_norm": Family("unit-norm constraint", "", False, True),
    "noise": Family("Gaussian noise", "standard deviation", True, True),
    "activity_l1": Family("L1 activity penalty", "strength", True, True),
    "activity_l2": Family("L2 activity penalty", "strength", True, True),
    "activity_l1_l2": Family("L1 + L2 activity penalty", "strength", True, True),
}
# Where noise or an activity penalty acts, as a run name shows it.
PLACE_NAMES = {"input": "input", "pre_activation": "pre", "post_activation": "post"}


@dataclass(frozen=True)
class Remedy:
    """A configuration's family (a key of FAMILIES, or `none`) and its setting."""

    kind: str
    setting: float

    @property
    def strength(self) -> float:
        """The setting as an amount of regularization: larger is stronger, within a family."""
        family = FAMILIES.get(self.kind)
        if family is None or family.larger_is_stronger:
            return self.setting
        return 1 / self.setting


def _number(value: float) -> str:
    """0.5 -> `0p5`, 2.0 -> `2`: no dots, since DVC flattens metric keys on dots."""
    return f"{value:g}".replace(".", "p").replace("+", "")


def _strength(strength: float) -> str:
    """`1e-03`, `2p50e-01`: a penalty strength, exactly."""
    text = f"{strength:.0e}"
    if float(text) != strength:
        text = f"{strength:.6e}".rstrip("0").replace(".", "p")
    return text


def _parts(config: Any) -> list[tuple[str, float, str]]:
    """(family, setting, name part) for each remedy a configuration applies, in a fixed order.

    `config` is a Config, or a Hydra job's configuration (attribute access alike).
    """
    parts = []
    penalty, model = config.penalty, config.model
    if penalty.kind != "none":
        suffix = "" if penalty.apply_to == "hidden" else f"_{penalty.apply_to}"
        strength = float(penalty.strength)
        parts.append((penalty.kind, strength, f"{penalty.kind}_{_strength(strength)}{suffix}"))
    if float(model.dropout) > 0:
        parts.append(("dropout", float(model.dropout), f"dropout_{_number(model.dropout)}"))
    if model.constraint == "max_norm":
        parts.append(("max_norm", float(model.max_norm), f"max_norm_{_number(model.max_norm)}"))
    elif model.constraint == "unit_norm":
        parts.append(("unit_norm", 1.0, "unit_norm"))
    if float(model.noise) > 0:
        name = f"noise_{_number(model.noise)}_{PLACE_NAMES[model.noise_at]}"
        parts.append(("noise", float(model.noise), name))
    if model.activity != "none":
        strength = float(model.activity_strength)
        place = PLACE_NAMES[model.activity_at]
        name = f"activity_{model.activity}_{_strength(strength)}_{place}"
        parts.append((f"activity_{model.activity}", strength, name))
    stopping = config.train.early_stopping
    if stopping.watch != "none":
        name = f"patience_{stopping.patience}"
        name += "_acc" if stopping.monitor == "val_accuracy" else ""
        name += TEST_WATCH if stopping.watch == "test" else ""
        parts.append(("early_stopping", float(stopping.patience), name))
    return parts


def remedy_of(config: Any) -> Remedy:
    """The configuration's remedy: its first one's family and setting; `none` without one."""
    parts = _parts(config)
    if not parts:
        return Remedy("none", 0.0)
    return Remedy(parts[0][0], parts[0][1])


def run_name(config: Any) -> str:
    """`none`, `l2_1e-03`, `dropout_0p2`, `patience_50`, `max_norm_1`, `unit_norm`,
    `noise_0p1_input`, `activity_l1_1e-04_post`, or the parts joined (`l2_1e-03_dropout_0p2`):
    no dots, since DVC flattens metric keys on dots."""
    return "_".join(name for _, _, name in _parts(config)) or "none"


TEST_WATCH_LABEL = "stopped on the test set: optimistic"  # how every report marks those


def watched_test(name: str) -> bool:
    """Whether the configuration so named stopped early on the test set (`_test` in its
    name): its test figures are then optimistic."""
    return name.endswith(TEST_WATCH) or f"{TEST_WATCH}_" in name
