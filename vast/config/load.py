"""Merge a VAST config file: defaults < the file < `--key value` overrides; `--pretrain_dir`
inheritance; derived keys; the merged `Config` (written as hps.json); the data-path check.

A config file has three blocks: `run_cfg`, `model_cfg` and `data_cfg {"train": [...], "val": [...]}`.
`run_cfg.default` / `model_cfg.default` name a defaults file whose keys the block's own keys override;
command-line `--key value` overrides win over both. The keys a block may hold are those of the schema
(`vast.config.keys`), so the original VAST config files load unchanged and a typo is an error that
names the key and the closest valid ones.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vast.config.argv import option_value, parse_command_line
from vast.config.entries import DataEntry, parse_data_entry
from vast.config.files import read_json, resolve_path
from vast.config.keys import DATA_KEYS, DATA_OVERRIDES, DERIVED_MODEL_KEYS, INERT_OPTIONS, MODEL_KEYS, RUN_KEYS, SCHEMAS, KeySpec
from vast.config.values import coerce, suggest
from vast.errors import ConfigError
from vast.tasks import Modality, TaskType, parse_task

logger = logging.getLogger(__name__)


class Section(dict):
    """A config block: a dict (so it writes to JSON as is) with attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value


# --- the merged config -----------------------------------------------------------------------


@dataclass
class Config:
    """The merged, validated configuration of one run."""

    run_cfg: Section
    model_cfg: Section
    train: list[DataEntry]
    val: list[DataEntry]
    config_path: str

    def to_json(self) -> dict:
        return {
            "run_cfg": dict(self.run_cfg),
            "model_cfg": dict(self.model_cfg),
            "data_cfg": {"train": [e.to_json() for e in self.train], "val": [e.to_json() for e in self.val]},
            "config_path": self.config_path,
        }

    def write_hps(self, output_dir: Path | None = None) -> Path:
        out = Path(output_dir or self.run_cfg.output_dir) / "log" / "hps.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(out)
        return out


def _defaults_layer(block: str, default_file: str) -> tuple[dict, str]:
    """The `default` file a block names. The original pretrain_vast.json names files its release
    never shipped (`./config/default_run_cfg.json`, `./config/newvlp/default_model_cfg.json`); a
    missing file of that name means the project's defaults, with a warning that says how to fix it."""
    path = resolve_path(default_file)
    if not path.is_file() and path.name == f"default_{block}.json":
        logger.warning("%s.default: %s not found; using the project's defaults instead (point it at "
                       "config/vast/default_%s.json)", block, default_file, block)
        return {}, "the project's defaults"
    return read_json(path, f"{block}.default file"), str(path)


def _merge_block(block: str, file_block: Any, config_path: Path) -> tuple[Section, set[str]]:
    """The block's values over the schema's defaults, and the keys that the config file itself sets
    (not its defaults file)."""
    schema = SCHEMAS[block]
    if file_block is None:
        file_block = {}
    if not isinstance(file_block, dict):
        raise ConfigError(f"{config_path}: '{block}' must be an object")
    merged = Section({key: copy.deepcopy(spec.default) for key, spec in schema.items()})
    layers = []
    if file_block.get("default"):
        layers.append(_defaults_layer(block, file_block["default"]))
    layers.append((file_block, str(config_path)))
    for values, source in layers:
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: '{block}' defaults must be a JSON object")
        for key, value in values.items():
            if key == "default" or key.startswith("_"):  # "_note": a comment
                continue
            if key not in schema:
                if key in INERT_OPTIONS:
                    logger.warning("%s.%s (in %s) has no effect in this implementation", block, key, source)
                    continue
                raise ConfigError(f"{source}: unknown key {block}.{key}{suggest(key, schema)}")
            spec = schema[key]
            merged[key] = coerce(value, spec.kind, f"{block}.{key} (in {source})", spec.choices)
    given = {key for key in file_block if key in schema}
    return merged, given


def _entry_text_lengths(model_cfg: Section, entries: list[DataEntry], command_line: dict) -> None:
    """A data entry's `max_caption_len` (the original VQAv2 recipe's) sets the question length of QA
    entries and the caption length of the others; entries that disagree cannot share one model."""
    for is_qa, key in ((True, "max_question_len"), (False, "max_caption_len")):
        lengths = {e.max_caption_len: e for e in entries
                   if e.max_caption_len is not None and (TaskType.QA in e.task.types) == is_qa}
        if len(lengths) > 1:
            first, second = list(lengths.values())[:2]
            raise ConfigError(f"{first.where} and {second.where} set different max_caption_len "
                              f"({first.max_caption_len}, {second.max_caption_len}); give them one value")
        if lengths and key not in command_line:
            model_cfg[key] = next(iter(lengths))


def _inherit_from_pretrain_dir(model_cfg: Section, pretrain_dir: str) -> None:
    """Architecture keys come from the pretrained run, so its checkpoint fits the model built here."""
    hps_path = resolve_path(Path(pretrain_dir) / "log" / "hps.json")
    hps = read_json(hps_path, "--pretrain_dir hps.json")
    pretrained = hps.get("model_cfg", {}) if isinstance(hps, dict) else {}
    inherit = set(model_cfg.inherit_keys) | {"vision_encoder_type"}
    for key in sorted(inherit):
        if key in pretrained and key in MODEL_KEYS:
            model_cfg[key] = pretrained[key]


def _apply_data_override(option: str, tokens: list[str], train: list[DataEntry], val: list[DataEntry]) -> None:
    split, key = DATA_OVERRIDES[option]
    entries = {"train": train, "val": val, "both": train + val}[split]
    spec = DATA_KEYS[key]
    value = option_value(tokens, KeySpec(spec.kind, None, spec.choices), f"--{option}")
    if key == "task":
        try:
            value = parse_task(value)
        except ConfigError as error:
            raise ConfigError(f"--{option}: {error}") from None
    elif key in ("batch_size", "vision_sample_num", "audio_sample_num") and value < 1:
        raise ConfigError(f"--{option}: must be at least 1, got {value}")
    for entry in entries:
        setattr(entry, key, value)


def _max_sample_num(train: list[DataEntry], val: list[DataEntry], key: str) -> int:
    """Frame/clip embedding tables are sized by the training sets (else the test sets), as in VAST."""
    entries = train or val
    return max((getattr(e, key) for e in entries), default=1)


def load_config(config_path: str | Path, overrides: dict[str, list[str]] | None = None) -> Config:
    """Read a config file, merge defaults and command-line overrides, validate everything but data paths."""
    overrides = dict(overrides or {})
    path = resolve_path(config_path)
    raw = read_json(path, "config file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file is a JSON object with run_cfg, model_cfg and data_cfg")
    for key in raw:
        if key not in ("run_cfg", "model_cfg", "data_cfg") and not key.startswith("_"):  # "_note": a comment
            raise ConfigError(f"{path}: unknown top-level key '{key}'{suggest(key, ('run_cfg', 'model_cfg', 'data_cfg'))}")

    run_cfg, run_given = _merge_block("run_cfg", raw.get("run_cfg"), path)
    model_cfg, model_given = _merge_block("model_cfg", raw.get("model_cfg"), path)
    if "vision_resolution" in run_given and "vision_resolution" not in model_given:
        model_cfg.vision_resolution = run_cfg.vision_resolution  # the original read it from run_cfg

    data_cfg = raw.get("data_cfg") or {}
    if not isinstance(data_cfg, dict):
        raise ConfigError(f"{path}: data_cfg must be an object with 'train' and 'val' lists")
    for key in data_cfg:
        if key not in ("train", "val"):
            raise ConfigError(f"{path}: unknown key data_cfg.{key}{suggest(key, ('train', 'val'))}")
    splits = {}
    for split in ("train", "val"):
        entries = data_cfg.get(split) or []
        if not isinstance(entries, list):
            raise ConfigError(f"{path}: data_cfg.{split} must be a list of dataset entries")
        splits[split] = [parse_data_entry(entry, split, i) for i, entry in enumerate(entries)]

    # Command-line options: run_cfg first, then model_cfg, then data entries (as the original did).
    for option, tokens in overrides.items():
        if option in RUN_KEYS or option in MODEL_KEYS:
            for block, schema in (("run_cfg", RUN_KEYS), ("model_cfg", MODEL_KEYS)):
                if option in schema:
                    target = run_cfg if block == "run_cfg" else model_cfg
                    target[option] = option_value(tokens, schema[option], f"--{option}")
        elif option in DATA_OVERRIDES:
            _apply_data_override(option, tokens, splits["train"], splits["val"])
        elif option in INERT_OPTIONS:
            logger.warning("--%s has no effect in this implementation", option)
        else:
            known = set(RUN_KEYS) | set(MODEL_KEYS) | set(DATA_OVERRIDES) | {"config"}
            raise ConfigError(f"unknown option --{option}{suggest(option, known)}")

    if run_cfg.pretrain_dir:
        _inherit_from_pretrain_dir(model_cfg, run_cfg.pretrain_dir)
        for option, tokens in overrides.items():  # the command line still wins over inherited keys
            if option in MODEL_KEYS:
                model_cfg[option] = option_value(tokens, MODEL_KEYS[option], f"--{option}")

    _entry_text_lengths(model_cfg, splits["train"] + splits["val"], overrides)
    if not splits["train"] and not splits["val"]:
        raise ConfigError(f"{path}: data_cfg lists no dataset (add entries under 'train' or 'val')")
    if run_cfg.mode == "training" and not splits["train"] and not run_cfg.zero_shot:
        raise ConfigError(f"{path}: mode 'training' needs data_cfg.train entries (or use --mode testing)")
    if run_cfg.bf16:
        run_cfg.fp16 = False
    if not run_cfg.output_dir or run_cfg.output_dir == "none":
        run_cfg.output_dir = str(Path("output") / path.stem)
    model_cfg.max_vision_sample_num = _max_sample_num(splits["train"], splits["val"], "vision_sample_num")
    model_cfg.max_audio_sample_num = _max_sample_num(splits["train"], splits["val"], "audio_sample_num")
    return Config(run_cfg, model_cfg, splits["train"], splits["val"], str(path))


def required_paths(config: Config) -> list[tuple[str, str, str]]:
    """(path, config key, "file" | "dir") of every annotation file, media folder, reference file
    and starting checkpoint the run reads."""
    paths = [(config.run_cfg.pretrain_dir, "run_cfg.pretrain_dir", "dir"),
             (config.run_cfg.checkpoint, "run_cfg.checkpoint", "file")]
    for entry in config.train + config.val:
        modalities = entry.task.modalities
        if entry.annfile:
            paths.append((entry.annfile, f"{entry.where}.annfile", "file"))
        if entry.type == "shards":
            index = entry.shards[0] if len(entry.shards) == 1 and str(entry.shards[0]).endswith(".json") else ""
            paths.append((index, f"{entry.where}.shards", "file"))
            continue
        paths.append((entry.txt, f"{entry.where}.txt", "file"))
        if Modality.VISION in modalities or (Modality.AUDIO in modalities and not entry.audio):
            if not entry.vision:
                raise ConfigError(f"{entry.where}: task '{entry.task}' needs 'vision' (the media folder)")
            paths.append((entry.vision, f"{entry.where}.vision", "dir"))
        if Modality.AUDIO in modalities and entry.audio:
            paths.append((entry.audio, f"{entry.where}.audio", "dir"))
    return [(value, where, kind) for value, where, kind in paths if value]


def path_exists(value: str, kind: str) -> bool:
    resolved = resolve_path(value)
    return resolved.is_dir() if kind == "dir" else resolved.is_file()


def check_data_paths(config: Config) -> None:
    """Fail on the first missing annotation file or media folder, naming it and its dataset."""
    for value, where, kind in required_paths(config):
        if not path_exists(value, kind):
            what = "folder" if kind == "dir" else "file"
            hint = " (see datasets/README.md)" if where.startswith("data_cfg") else ""
            raise ConfigError(f"{where}: {what} not found: {value}{hint}")


def load_from_command_line(argv: list[str]) -> Config:
    command_line = parse_command_line(argv)
    return load_config(command_line.config, command_line.overrides)


def complete_model_cfg(values) -> Section:
    """A model_cfg with every schema key: the schema's defaults under the given values (for models
    built from a partial dict, as tests and notebooks do), so consumers never restate a default."""
    complete = {key: copy.deepcopy(spec.default) for key, spec in MODEL_KEYS.items()}
    complete.update(DERIVED_MODEL_KEYS)
    complete.update(values)
    return Section(complete)
