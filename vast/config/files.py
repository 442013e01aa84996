"""Where config files are: reading a JSON file with a one-line error, and resolving relative paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vast.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULTS_DIR = PROJECT_ROOT / "config" / "vast"


def read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{what} {path} is not valid JSON: {error}") from None


def resolve_path(path: str | Path) -> Path:
    """A relative path as the original configs mean it: from the working directory, else the project root."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.exists():
        return candidate
    from_root = PROJECT_ROOT / candidate
    return from_root if from_root.exists() else candidate

