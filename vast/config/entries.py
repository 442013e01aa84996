"""Data entries: one dataset of `data_cfg.train` / `data_cfg.val`, validated into a typed `DataEntry`."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from vast.config.keys import DATA_KEYS, REQUIRED
from vast.config.values import coerce, suggest
from vast.errors import ConfigError
from vast.tasks import TaskSpec, parse_task

logger = logging.getLogger(__name__)

SHARD_MEDIA_KEYS = ("txt", "vision", "audio")


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
    max_caption_len: int | None = None
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
    raw = {key: value for key, value in raw.items() if not key.startswith("_")}  # "_note": a comment
    for key in raw:
        if key not in DATA_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}'{suggest(key, DATA_KEYS)}")
    values = {}
    for key, spec in DATA_KEYS.items():
        if key not in raw:
            if spec.default is REQUIRED:
                raise ConfigError(f"{where}: missing required key '{key}'")
            values[key] = spec.default
            continue
        values[key] = coerce(raw[key], spec.kind, f"{where}.{key}", spec.choices)
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
    task_text = values.pop("task")
    if task_text.strip("'\" ") != task_text:
        logger.warning("%s.task: %r has a stray quote or space; read as %r (remove it from the file)",
                       where, task_text, task_text.strip("'\" "))
        task_text = task_text.strip("'\" ")
    try:
        task = parse_task(task_text)
    except ConfigError as error:
        raise ConfigError(f"{where}.task: {error}") from None
    for key in ("batch_size", "vision_sample_num", "audio_sample_num"):
        if values[key] < 1:
            raise ConfigError(f"{where}.{key}: must be at least 1, got {values[key]}")
    if split == "train" and values["epoch"] is None and values["steps"] is None:
        raise ConfigError(f"{where}: a training dataset needs 'epoch' or 'steps'")
    return DataEntry(split=split, index=index, task=task, **values)
