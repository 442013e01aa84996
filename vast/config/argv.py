"""run.py's command line: `--config FILE` and `--key value` tokens, and an option's value for its key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vast.config.keys import KeySpec
from vast.config.values import FlagOrText, coerce
from vast.errors import ConfigError


@dataclass
class CommandLine:
    config: str
    overrides: dict[str, list[str]]  # option -> its value tokens ([] for a bare flag)


def parse_command_line(argv: list[str]) -> CommandLine:
    """`--config FILE` and the other options of run.py (see `parse_options`)."""
    overrides = parse_options(argv)
    overrides.pop("local_rank", None)  # torch.distributed.launch passes it; the environment has it too
    config = overrides.pop("config", None)
    if not config or len(config) != 1:
        raise ConfigError("give a config file: python run.py --config config/vast/finetune_cfg/retrieval-msrvtt.json")
    return CommandLine(config[0], overrides)


def parse_options(argv: list[str]) -> dict[str, list[str]]:
    """Split `--key value [value ...]` / `--key=value` / `--flag` tokens; no knowledge of keys here."""
    overrides: dict[str, list[str]] = {}
    current = None
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            key, has_value, value = token[2:].partition("=")
            key = key.replace("-", "_")
            if key in overrides:
                raise ConfigError(f"option --{key} is given twice")
            overrides[key] = [value] if has_value else []
            current = None if has_value else key
        elif current is not None:
            overrides[current].append(token)
        else:
            raise ConfigError(f"unexpected argument {token!r}: options are written --key value")
    return overrides


def option_value(tokens: list[str], spec: KeySpec, where: str) -> Any:
    if not tokens:
        if spec.kind in (bool, FlagOrText):  # a bare flag: --resume, --deepspeed
            return True
        raise ConfigError(f"{where}: needs a value")
    if spec.kind is list:
        return [coerce(t, float, where) if _is_number(t) else t for t in tokens] if len(tokens) > 1 \
            else coerce(tokens[0], list, where)
    if len(tokens) > 1:
        raise ConfigError(f"{where}: expected one value, got {' '.join(tokens)}")
    return coerce(tokens[0], spec.kind, where, spec.choices)


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False
