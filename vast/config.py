"""Load, merge and validate VAST config files; typed access; the merged config written as hps.json.

A config file has three blocks: `run_cfg`, `model_cfg` and `data_cfg {"train": [...], "val": [...]}`.
`run_cfg.default` / `model_cfg.default` name a defaults file whose keys the block's own keys override;
command-line `--key value` overrides win over both. The keys a block may hold are those of the
project's own `config/vast/default_{run,model}_cfg.json` (the schema: their values give each key's
type and default), so the original VAST config files load unchanged and a typo is an error that names
the key and the closest valid ones.
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vast.errors import ConfigError
from vast.tasks import Modality, TaskSpec, parse_task

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_DIR = PROJECT_ROOT / "config" / "vast"

# Keys whose default value does not show the full type, or that accept a fixed set of values.
CHOICES = {
    "run_cfg.optim": ("adamw", "adam"),
    "run_cfg.scheduler": ("warmup_linear", "warmup_cosine", "constant"),
    "run_cfg.mode": ("training", "testing", "inspect", "check_data"),
    "run_cfg.dataset_mix_type": ("random", "round_robin"),
    "run_cfg.contrastive_negatives": ("global", "micro_batch"),
}


class FlagOrText:
    """The kind of a key that is off, on, or names something: `resume` (false, true = the newest
    checkpoint of output_dir, or a path), `deepspeed` (false, a ZeRO stage, or a JSON file)."""


# Keys whose kind the default value does not show.
KINDS = {"run_cfg.resume": FlagOrText, "run_cfg.deepspeed": FlagOrText}

# Options the original VAST command line accepted that this implementation does not use. They are
# accepted (so old launch scripts run) and a warning says they have no effect.
INERT_OPTIONS = frozenset(
    """amp clip_lr_text dropout opt_model llm_model train_id test_id max_generation_len max_length
    min_length max_output_txt_len max_text_tokens scst_finetuning use_proposal_conv trainer_type
    concatenated_nums loss_type huggingface_trainer prompt model_cfg_file llm_type dual_softmax
    pool_video use_flash_attn qformer_question frozen_llm qformer_text_input evaluate_ret_text
    pool_vision vision_perceiver_query_num perceiver_mode vision_cut_frames""".split()
)

# Command-line options that change data entries: option -> (split, entry key). "both" = train and val.
DATA_OVERRIDES = {
    "train_epoch": ("train", "epoch"),
    "train_steps": ("train", "steps"),
    "train_vision_sample_num": ("train", "vision_sample_num"),
    "train_audio_sample_num": ("train", "audio_sample_num"),
    "train_batch_size": ("train", "batch_size"),
    "train_task": ("train", "task"),
    "test_batch_size": ("val", "batch_size"),
    "test_vision_sample_num": ("val", "vision_sample_num"),
    "test_audio_sample_num": ("val", "audio_sample_num"),
    "test_task": ("val", "task"),
    "vision_transforms": ("both", "vision_transforms"),
}

VISION_FORMATS = ("video_rawvideo", "video_frame", "image_rawimage")
VISION_TRANSFORMS = ("none", "crop_flip")
DATA_TYPES = ("annoindexed", "shards")
_REQUIRED = object()

# Data entry keys: key -> (type, default, choices). `datatype` is the older name of `vision_format`.
DATA_KEYS: dict[str, tuple[type, Any, tuple | None]] = {
    "type": (str, "annoindexed", DATA_TYPES),
    "training": (bool, None, None),
    "name": (str, _REQUIRED, None),
    "txt": (str, "", None),  # required for annoindexed
    "shards": (list, [], None),  # type shards: a brace pattern, a list of URLs, or a shards.json
    "shuffle_buffer": (int, 1000, None),
    "resampled": (bool, False, None),
    "vision": (str, "", None),
    "audio": (str, "", None),
    "vision_format": (str, "video_rawvideo", VISION_FORMATS),
    "datatype": (str, "", VISION_FORMATS),
    "vision_sample_num": (int, 1, None),
    "audio_sample_num": (int, 1, None),
    "vision_transforms": (str, "none", VISION_TRANSFORMS),
    "task": (str, _REQUIRED, None),
    "epoch": (float, None, None),
    "steps": (int, None, None),
    "batch_size": (int, _REQUIRED, None),
    "n_workers": (int, 0, None),
    "annfile": (str, "", None),
    "make_submission": (bool, False, None),
    "audio_missing": (str, "error", ("error", "zeros")),
    "allow_missing_audio": (bool, False, None),  # older spelling of audio_missing: zeros
}
SHARD_MEDIA_KEYS = ("txt", "vision", "audio")


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=3, cutoff=0.5)
    if close:
        return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"
    return ""


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


# --- values ----------------------------------------------------------------------------------

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
            f"{where}: invalid value {result!r}{_suggest(str(result), choices)}; valid: {', '.join(choices)}"
        )
    return result


_TYPE_NAMES = {FlagOrText: "true, false or a name", bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


@dataclass(frozen=True)
class KeySpec:
    kind: type
    default: Any
    choices: tuple | None = None


def _schema_from_defaults(block: str) -> dict[str, KeySpec]:
    defaults = read_json(DEFAULTS_DIR / f"default_{block}.json", f"{block} defaults file")
    schema = {}
    for key, value in defaults.items():
        kind = type(value) if value is not None else str
        if kind is int and key.endswith(("_lr", "_ratio", "learning_rate")):
            kind = float
        kind = KINDS.get(f"{block}.{key}", kind)
        schema[key] = KeySpec(kind, value, CHOICES.get(f"{block}.{key}"))
    return schema


RUN_SCHEMA = _schema_from_defaults("run_cfg")
MODEL_SCHEMA = _schema_from_defaults("model_cfg")
SCHEMAS = {"run_cfg": RUN_SCHEMA, "model_cfg": MODEL_SCHEMA}


class Section(dict):
    """A config block: a dict (so it writes to JSON as is) with attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value


# --- data entries ----------------------------------------------------------------------------


@dataclass
class DataEntry:
    """One dataset of `data_cfg.train` or `data_cfg.val`, validated and with its task parsed."""

    split: str  # "train" | "val"
    index: int
    name: str
    task: TaskSpec
    batch_size: int
    txt: str = ""
    type: str = "annoindexed"
    shards: list = field(default_factory=list)
    shuffle_buffer: int = 1000
    resampled: bool = False
    vision: str = ""
    audio: str = ""
    vision_format: str = "video_rawvideo"
    vision_sample_num: int = 1
    audio_sample_num: int = 1
    vision_transforms: str = "none"
    epoch: float | None = None
    steps: int | None = None
    n_workers: int = 0
    annfile: str = ""
    make_submission: bool = False
    audio_missing: str = "error"
    extra: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"data_cfg.{self.split}[{self.index}] ({self.name})"

    @property
    def training(self) -> bool:
        return self.split == "train"

    def to_json(self) -> dict:
        raw = asdict(self)
        raw["task"] = self.task.text
        raw["training"] = self.training
        for key in ("split", "index", "extra"):
            raw.pop(key)
        return raw


def parse_data_entry(raw: Any, split: str, index: int) -> DataEntry:
    where = f"data_cfg.{split}[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object with 'name', 'txt', 'task', ..., got {raw!r}")
    if isinstance(raw.get("name"), str):
        where = f"{where} ({raw['name']})"
    for key in raw:
        if key not in DATA_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}'{_suggest(key, DATA_KEYS)}")
    values = {}
    for key, (kind, default, choices) in DATA_KEYS.items():
        if key not in raw:
            if default is _REQUIRED:
                raise ConfigError(f"{where}: missing required key '{key}'")
            values[key] = default
            continue
        values[key] = coerce(raw[key], kind, f"{where}.{key}", choices)
    if values.pop("datatype") and "vision_format" not in raw:
        values["vision_format"] = raw["datatype"]
    if values.pop("allow_missing_audio") and "audio_missing" not in raw:
        values["audio_missing"] = "zeros"
    if values["type"] == "annoindexed" and not values["txt"]:
        raise ConfigError(f"{where}: missing required key 'txt' (the annotation file)")
    if values["type"] == "shards":
        if not values["shards"]:
            raise ConfigError(f"{where}: a 'shards' entry needs 'shards': a brace pattern "
                              "(\"data/shard-{000000..000009}.tar\"), a list of URLs, or a shards.json")
        given = [key for key in SHARD_MEDIA_KEYS if key in raw]
        if given:
            raise ConfigError(f"{where}: '{given[0]}' does not apply to a 'shards' entry (the shards hold "
                              "text and media); remove it")
        if values["resampled"] and split == "train" and values["steps"] is None:
            raise ConfigError(f"{where}: a resampled shard stream has no epochs; give 'steps'")
    if values["shuffle_buffer"] < 0:
        raise ConfigError(f"{where}.shuffle_buffer: must be 0 or more, got {values['shuffle_buffer']}")
    training = values.pop("training")
    if training is not None and training != (split == "train"):
        raise ConfigError(f"{where}: 'training' is {training} but the entry is listed under '{split}'")
    try:
        task = parse_task(values.pop("task"))
    except ConfigError as error:
        raise ConfigError(f"{where}.task: {error}") from None
    for key in ("batch_size", "vision_sample_num", "audio_sample_num"):
        if values[key] < 1:
            raise ConfigError(f"{where}.{key}: must be at least 1, got {values[key]}")
    if split == "train" and values["epoch"] is None and values["steps"] is None:
        raise ConfigError(f"{where}: a training dataset needs 'epoch' or 'steps'")
    return DataEntry(split=split, index=index, task=task, **values)


# --- command line ----------------------------------------------------------------------------


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


def _option_value(tokens: list[str], spec: KeySpec, where: str) -> Any:
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


def _merge_block(block: str, file_block: Any, config_path: Path) -> Section:
    schema = SCHEMAS[block]
    if file_block is None:
        file_block = {}
    if not isinstance(file_block, dict):
        raise ConfigError(f"{config_path}: '{block}' must be an object")
    merged = Section({key: copy.deepcopy(spec.default) for key, spec in schema.items()})
    layers = []
    default_file = file_block.get("default")
    if default_file:
        path = resolve_path(default_file)
        layers.append((read_json(path, f"{block}.default file"), str(path)))
    layers.append((file_block, str(config_path)))
    for values, source in layers:
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: '{block}' defaults must be a JSON object")
        for key, value in values.items():
            if key == "default":
                continue
            if key not in schema:
                if key in INERT_OPTIONS:
                    logger.warning("%s.%s (in %s) has no effect in this implementation", block, key, source)
                    continue
                raise ConfigError(f"{source}: unknown key {block}.{key}{_suggest(key, schema)}")
            spec = schema[key]
            merged[key] = coerce(value, spec.kind, f"{block}.{key} (in {source})", spec.choices)
    return merged


def _inherit_from_pretrain_dir(model_cfg: Section, pretrain_dir: str) -> None:
    """Architecture keys come from the pretrained run, so its checkpoint fits the model built here."""
    hps_path = resolve_path(Path(pretrain_dir) / "log" / "hps.json")
    hps = read_json(hps_path, "--pretrain_dir hps.json")
    pretrained = hps.get("model_cfg", {}) if isinstance(hps, dict) else {}
    inherit = set(model_cfg.inherit_keys) | {"vision_encoder_type"}
    for key in sorted(inherit):
        if key in pretrained and key in MODEL_SCHEMA:
            model_cfg[key] = pretrained[key]


def _apply_data_override(option: str, tokens: list[str], train: list[DataEntry], val: list[DataEntry]) -> None:
    split, key = DATA_OVERRIDES[option]
    entries = {"train": train, "val": val, "both": train + val}[split]
    kind, _, choices = DATA_KEYS[key]
    value = _option_value(tokens, KeySpec(kind, None, choices), f"--{option}")
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
        if key not in ("run_cfg", "model_cfg", "data_cfg"):
            raise ConfigError(f"{path}: unknown top-level key '{key}'{_suggest(key, ('run_cfg', 'model_cfg', 'data_cfg'))}")

    run_cfg = _merge_block("run_cfg", raw.get("run_cfg"), path)
    model_cfg = _merge_block("model_cfg", raw.get("model_cfg"), path)

    data_cfg = raw.get("data_cfg") or {}
    if not isinstance(data_cfg, dict):
        raise ConfigError(f"{path}: data_cfg must be an object with 'train' and 'val' lists")
    for key in data_cfg:
        if key not in ("train", "val"):
            raise ConfigError(f"{path}: unknown key data_cfg.{key}{_suggest(key, ('train', 'val'))}")
    splits = {}
    for split in ("train", "val"):
        entries = data_cfg.get(split) or []
        if not isinstance(entries, list):
            raise ConfigError(f"{path}: data_cfg.{split} must be a list of dataset entries")
        splits[split] = [parse_data_entry(entry, split, i) for i, entry in enumerate(entries)]

    # Command-line options: run_cfg first, then model_cfg, then data entries (as the original did).
    for option, tokens in overrides.items():
        if option in RUN_SCHEMA or option in MODEL_SCHEMA:
            for block, schema in (("run_cfg", RUN_SCHEMA), ("model_cfg", MODEL_SCHEMA)):
                if option in schema:
                    target = run_cfg if block == "run_cfg" else model_cfg
                    target[option] = _option_value(tokens, schema[option], f"--{option}")
        elif option in DATA_OVERRIDES:
            _apply_data_override(option, tokens, splits["train"], splits["val"])
        elif option in INERT_OPTIONS:
            logger.warning("--%s has no effect in this implementation", option)
        else:
            known = set(RUN_SCHEMA) | set(MODEL_SCHEMA) | set(DATA_OVERRIDES) | {"config"}
            raise ConfigError(f"unknown option --{option}{_suggest(option, known)}")

    if run_cfg.pretrain_dir:
        _inherit_from_pretrain_dir(model_cfg, run_cfg.pretrain_dir)
        for option, tokens in overrides.items():  # the command line still wins over inherited keys
            if option in MODEL_SCHEMA:
                model_cfg[option] = _option_value(tokens, MODEL_SCHEMA[option], f"--{option}")

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


def check_data_paths(config: Config) -> None:
    """Fail on the first missing annotation file or media folder, naming it and its dataset."""
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
            if entry.type == "annoindexed":
                if not entry.vision:
                    raise ConfigError(f"{entry.where}: task '{entry.task}' needs 'vision' (the media folder)")
                paths.append((entry.vision, f"{entry.where}.vision", "dir"))
        if Modality.AUDIO in modalities and entry.audio:
            paths.append((entry.audio, f"{entry.where}.audio", "dir"))
    for value, where, kind in paths:
        if not value:
            continue
        resolved = resolve_path(value)
        exists = resolved.is_dir() if kind == "dir" else resolved.is_file()
        if not exists:
            what = "folder" if kind == "dir" else "file"
            hint = " (see datasets/README.md)" if where.startswith("data_cfg") else ""
            raise ConfigError(f"{where}: {what} not found: {value}{hint}")


def load_from_command_line(argv: list[str]) -> Config:
    command_line = parse_command_line(argv)
    return load_config(command_line.config, command_line.overrides)
