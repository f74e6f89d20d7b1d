"""The one-line errors: a setting the schema refuses, a Hydra failure, and the exit status."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import ValidationError


class ConfigError(ValueError):
    """A setting that is not allowed; the message names the key and what is allowed."""


# pydantic's error types for a value of the wrong type, in the words of the messages.
TYPE_WORDS = {
    "int_type": "an integer",
    "float_type": "a finite number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dataclass_type": "a mapping",
}


def setting_error(error: ValidationError, schema: type) -> ConfigError:
    """One error pydantic found, in one line: `<key>: must be <allowed>, got <value>`.

    A value of the wrong type or an unknown key comes first: a rule is worth reading once every
    value has its type. The schema's own errors (type `rule`) carry `allowed`, `got` and `key`
    (dotted from the section whose rule across fields broke; empty for a field's rule).
    """
    found = min(error.errors(), key=lambda e: e["type"] == "rule")
    keys = [key for key in found["loc"] if isinstance(key, str)]  # a list's positions: no key
    context, kind = found.get("ctx") or {}, found["type"]
    if kind == "unexpected_keyword_argument":
        return ConfigError(unknown_key(".".join(keys), setting_names(schema, keys[:-1])))
    if "allowed" in context:
        keys += [key for key in context["key"].split(".") if key]
        allowed, got = context["allowed"], context["got"]
    elif kind == "literal_error":
        options = typing.get_args(hint_at(schema, keys))
        allowed, got = f"one of {', '.join(map(str, options))}", found["input"]
    else:
        allowed, got = TYPE_WORDS.get(kind, found["msg"]), found["input"]
    return ConfigError(f"{'.'.join(keys) or 'the configuration'}: must be {allowed}, got {got!r}")


def hint_at(schema: type, keys: Sequence[str]) -> Any:
    """The type of the setting at `keys` in `schema` (a section: its class), out of its list or
    its optional; a KeyError for a key it does not have."""
    hint: Any = schema
    for key in keys:
        hint = typing.get_type_hints(hint)[key]
        if typing.get_origin(hint) in (list, typing.Union, types.UnionType):
            (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


def setting_names(schema: type, keys: Sequence[str]) -> list[str]:
    return [f.name for f in dataclasses.fields(hint_at(schema, keys))]


def unknown_key(key: str, allowed: Sequence[str]) -> str:
    return f"{key}: unknown key; allowed here: {', '.join(allowed)}"


def hydra_error(error: BaseException, overrides: Sequence[str]) -> str:
    """One line for an error Hydra raised while composing: the override, the reason, and the
    options Hydra offers when it names a missing preset."""
    from hydra.errors import MissingConfigException

    reason = first_line(error)
    culprit = " ".join(overrides)
    if isinstance(error, MissingConfigException):
        if error.options:
            reason += f"; available: {', '.join(error.options)}"
        missing = error.missing_cfg_file or ""
        named = [o for o in overrides if missing.startswith(o.split("=")[0].lstrip("+~") + "/")]
        culprit = named[0] if named else culprit
    return f"{culprit}: {reason}" if culprit else reason


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def exit_on_config_error(error: ConfigError) -> NoReturn:
    """The one-line error and exit status 2 shared by every entry point."""
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2)
