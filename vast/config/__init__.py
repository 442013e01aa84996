"""VAST configuration: the key schema, file loading and merging, typed data entries.

    keys.py     every key's kind, one default and valid values (the schema; the defaults files are made from it)
    values.py   converting a JSON or command-line value to a key's kind
    files.py    reading config JSON, resolving relative paths
    argv.py     run.py's `--key value` command line
    entries.py  data entries -> `DataEntry`
    load.py     merging defaults, file and overrides into a `Config`; the data-path check
"""

from vast.config.argv import CommandLine, parse_command_line, parse_options
from vast.config.entries import DataEntry, parse_data_entry
from vast.config.files import DEFAULTS_DIR, PROJECT_ROOT, read_json, resolve_path
from vast.config.keys import (
    DATA_KEYS, DATA_OVERRIDES, INERT_OPTIONS, MODEL_KEYS, RUN_KEYS, SCHEMAS, KeySpec, defaults,
)
from vast.config.load import Config, Section, check_data_paths, complete_model_cfg, load_config, load_from_command_line
from vast.config.values import FlagOrText, coerce, suggest

__all__ = [
    "CommandLine", "Config", "DATA_KEYS", "DATA_OVERRIDES", "DEFAULTS_DIR", "DataEntry", "FlagOrText",
    "INERT_OPTIONS", "KeySpec", "MODEL_KEYS", "PROJECT_ROOT", "RUN_KEYS", "SCHEMAS", "Section",
    "check_data_paths", "coerce", "complete_model_cfg", "defaults", "load_config", "load_from_command_line",
    "parse_command_line", "parse_data_entry", "parse_options", "read_json", "resolve_path", "suggest",
]
