"""Config values: converting JSON and command-line values to a key's kind, and the "did you mean" hint."""

from __future__ import annotations

import difflib
import json
from typing import Any

from vast.errors import ConfigError


class FlagOrText:
    """The kind of a key that is off, on, or names something: `resume` (false, true = the newest
    checkpoint of output_dir, or a path), `deepspeed` (false, a ZeRO stage, or a JSON file)."""


def suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.5)
    if close:
        return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"
    return ""


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def coerce(value: Any, kind: type, where: str, choices: tuple | None = None) -> Any:
    """Convert a JSON or command-line value to the key's type, or fail naming the key."""
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                result = value
            elif isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                result = value.lower() in _TRUE
            elif isinstance(value, int) and value in (0, 1):
                result = bool(value)
            else:
                raise ValueError
        elif kind is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) else value
            if not isinstance(number, (int, float)) or number != int(number):
                raise ValueError
            result = int(number)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            result = float(value)
        elif kind is str:
            if not isinstance(value, str):
                raise ValueError
            result = value
        elif kind is FlagOrText:  # digits stay text here: `--deepspeed 1` is ZeRO stage 1
            if isinstance(value, bool):
                result = value
            elif isinstance(value, str) and value.lower() in (_TRUE | _FALSE) - {"0", "1"}:
                result = value.lower() in _TRUE
            elif isinstance(value, (str, int)) and str(value).strip():
                result = str(value)
            else:
                raise ValueError
        elif kind is list:
            if isinstance(value, str):
                value = json.loads(value) if value.startswith("[") else [value]
            if not isinstance(value, list):
                raise ValueError
            result = value
        else:
            result = value
    except (ValueError, TypeError, json.JSONDecodeError):
        raise ConfigError(
            f"{where}: expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {value!r}"
        ) from None
    if choices is not None and result not in choices:
        raise ConfigError(
            f"{where}: invalid value {result!r}{suggest(str(result), choices)}; valid: {', '.join(choices)}"
        )
    return result


_TYPE_NAMES = {FlagOrText: "true, false or a name", bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}
