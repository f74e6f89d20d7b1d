"""The building blocks of the files' schemas (artifacts.py): each figure's rule, a frozen
pydantic model that refuses unknown keys and converts nothing, and the one line that says what a
file breaks: `<file>: <key> must be <allowed>, got <value>`."""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StrictStr,
    StringConstraints,
    ValidationError,
)
from pydantic_core import PydanticCustomError, core_schema
from typing_extensions import is_typeddict

S = TypeVar("S", bound="Schema")


class ArtifactError(RuntimeError):
    """A file another stage wrote is missing or not what it should be; the message names it."""


# --- what a report may hold ------------------------------------------------------------------


def refused(allowed: str, got: Any, key: str = "", kind: str = "report") -> PydanticCustomError:
    """A value a report's rule refuses: `key` is dotted from where the rule sits ("": the value
    itself); kind `missing` for a key that must be there."""
    context = {"allowed": allowed, "got": got, "key": key}
    return PydanticCustomError(kind, "must be {allowed}", context)


class Rule:
    """A value's rule as a pydantic validator whose error says what is allowed."""

    @property
    def text(self) -> str:
        raise NotImplementedError

    def holds(self, value: Any) -> bool:
        raise NotImplementedError

    def __call__(self, value: Any) -> Any:
        if not self.holds(value):
            raise refused(self.text, value)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self)


@dataclass(frozen=True)
class Bounds(Rule):
    """A finite number (an integer or a float, never a bool or a string) in [low, high]. The
    value is kept as found: a file read and written again is the same bytes."""

    low: float = -math.inf
    high: float = math.inf

    @property
    def text(self) -> str:
        if self.high < math.inf:
            return f"a number in [{self.low:g}, {self.high:g}]"
        return "a finite number" + (f" >= {self.low:g}" if self.low > -math.inf else "")

    def holds(self, value: Any) -> bool:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value) and self.low <= value <= self.high


@dataclass(frozen=True)
class OneOf(Rule):
    """One of a few strings."""

    options: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"one of {', '.join(self.options)}"

    def holds(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.options


@dataclass(frozen=True)
class Words:
    """What a constrained type allows, in the words of the error messages."""

    text: str


ACCURACY, NON_NEGATIVE, GAP, FINITE = Bounds(0, 1), Bounds(0), Bounds(-1, 1), Bounds()
Accuracy = Annotated[float, ACCURACY]
Loss = Annotated[float, NON_NEGATIVE]
# A remedy's setting: a penalty's strength, a dropout rate, a patience, a max norm.
Strength = Annotated[float, NON_NEGATIVE]
Finite = Annotated[float, FINITE]
Sha256 = Annotated[
    StrictStr, StringConstraints(pattern=r"^[0-9a-f]{64}$"), Words("a SHA-256 (64 hex digits)")
]


def figure_bounds(name: str, spread: bool = False) -> Bounds:
    """A figure's rule, by its name: accuracies (`*acc`) and shares in [0, 1], losses (`*loss`)
    and weight norms (`hidden_*`) >= 0, the train-test gap in [-1, 1], anything else finite. A
    spread (standard deviation) is >= 0, and at most 1 for an accuracy or a share."""
    share = name.endswith(("acc", "share"))
    if spread or share:
        return ACCURACY if share else NON_NEGATIVE
    if name.endswith("loss") or name.startswith("hidden_"):
        return NON_NEGATIVE
    return GAP if name == "gap" else FINITE


def check_figure(name: str, value: Any, spread: bool, key: str) -> None:
    """A raw figure kept to its name's rule, checked before its type: a NaN accuracy is told
    what an accuracy may be."""
    bounds = figure_bounds(name, spread)
    if not bounds.holds(value):
        raise refused(bounds.text, value, key)


def _named(spread: bool) -> BeforeValidator:
    def check(values: Any) -> Any:
        for name, value in values.items() if isinstance(values, dict) else ():
            check_figure(name, value, spread, name)
        return values

    return BeforeValidator(check)


# Figures by name ({"train_acc": 1.0, "test_loss": 0.5, ...}), and their spreads.
Figures = Annotated[dict[str, Finite], _named(spread=False)]
Spreads = Annotated[dict[str, Finite], _named(spread=True)]
# A TypedDict's keys, as a schema's: all of them, no other, nothing converted.
STRICT = ConfigDict(extra="forbid", strict=True)


class Schema(BaseModel):
    """A report's content: checked when built or read, then frozen. A key other than its
    fields is refused, and nothing is converted (a string is not a number)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @classmethod
    def parse(cls: type[S], raw: Any, name: str, keys: Mapping[str, str] | None = None) -> S:
        """`raw` (parsed JSON) as this schema; ArtifactError of one line naming `name` (the
        file) and the key, which `keys` may rename for the message."""
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            key, problem = describe_error(cls, error)
        raise ArtifactError(error_line(name, (keys or {}).get(key, key), problem))

    def to_json(self) -> dict[str, Any]:
        """The content the file holds, keys in the schema's order."""
        return self.model_dump()


# --- one line for what a report breaks -------------------------------------------------------


def describe_error(schema: Any, error: ValidationError) -> tuple[str, str]:
    """The first value pydantic refused: its key (dotted; "" for the whole) and what is wrong
    (`must be <allowed>, got <value>`, `is missing (must be <allowed>)`, or `is not a key it may
    have (expected <keys>)`)."""
    found = error.errors()[0]
    context = found.get("ctx") or {}
    path = [part for part in found["loc"] if part != "[key]"]
    path += [part for part in context.get("key", "").split(".") if part]
    key = ".".join(map(str, path))
    if found["type"] == "extra_forbidden":
        expected = ", ".join(keys_of(type_at(schema, path[:-1])))
        return key, f"is not a key it may have (expected {expected})"
    # A rule on the value itself yields to its type's words, which say whether null is allowed.
    hint = None if context.get("key") else type_at(schema, path)
    allowed = allowed_text(hint) if hint is not None else context.get("allowed", found["msg"])
    if found["type"] == "missing":
        return key, f"is missing (must be {allowed})"
    return key, f"must be {allowed}, got {shown(context.get('got', found['input']))}"


def error_line(name: str, key: str, problem: str) -> str:
    return f"{name}: {key} {problem}" if key else f"{name}: {problem}"


def shown(value: Any) -> str:
    """A found value as JSON writes it (NaN and infinities as Python does), cut short."""
    if isinstance(value, float):
        text = repr(value)
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _bare(hint: Any) -> Any:
    """A type without its annotations and without None."""
    while typing.get_origin(hint) in (Annotated, typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def type_at(schema: Any, path: Sequence[Any]) -> Any:
    """The type `schema` gives the value at `path` (keys and list positions); None if none."""
    hint = schema
    for part in path:
        hint = _bare(hint)
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            fields = {field.alias or name: field for name, field in hint.model_fields.items()}
            if part in fields:
                hint = fields[part].rebuild_annotation()
            elif hint.model_config.get("extra") == "allow":
                hint = typing.get_args(typing.get_type_hints(hint)["__pydantic_extra__"])[1]
            else:
                return None
        elif is_typeddict(hint):
            hint = typing.get_type_hints(hint, include_extras=True).get(part)
        elif typing.get_origin(hint) in (dict, list):
            hint = typing.get_args(hint)[-1]
        else:
            return None
    return hint


def keys_of(hint: Any) -> list[str]:
    """The keys an object of this type has (none if it is not a schema or a TypedDict)."""
    hint = _bare(hint)
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return [f.alias or n for n, f in hint.model_fields.items() if not f.exclude]
    return list(typing.get_type_hints(hint)) if is_typeddict(hint) else []


TYPE_WORDS = {
    str: "a string",
    int: "an integer",
    float: "a number",
    dict: "an object",
    list: "a list",
}


def allowed_text(hint: Any) -> str:
    """What a type allows, in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        said = [meta.text for meta in args[1:] if isinstance(meta, Rule | Words)]
        return said[0] if said else allowed_text(args[0])
    if origin in (typing.Union, types.UnionType):
        kept = [arg for arg in args if arg is not type(None)]
        return " or ".join(map(allowed_text, kept)) + (" or null" if len(kept) < len(args) else "")
    if keys_of(hint):
        return f"an object with {', '.join(keys_of(hint))}"
    return TYPE_WORDS.get(origin or hint, "a value")
