"""Settings of a labeling run: `config/vast/captioner_cfg/label-corpus.json` plus `--key value` overrides.

The JSON file is the schema: each key's type and default are its value there, so a key has one
default and the command line is checked against it (an unknown key is an error naming close
matches). `LabelConfig` hands each stage its own small config (`SplitConfig`, `AsrConfig`,
`CaptionerConfig`, ...), so stages never read the flat settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vast.config import DEFAULTS_DIR, coerce, read_json, resolve_path, suggest
from vast.errors import ConfigError
from vast.labeling.asr import AsrConfig
from vast.labeling.captioners import CaptionerConfig
from vast.labeling.clips import DecodeConfig, SplitConfig

DEFAULT_CONFIG = DEFAULTS_DIR / "captioner_cfg" / "label-corpus.json"
CHOICES = {"engine": ("inprocess", "ray"), "split": ("none", "fixed", "scenes"), "media": ("as_is", "presampled")}
NO_MODEL = ("", "none")  # a captioner set to one of these is not run


@dataclass(frozen=True)
class LabelConfig:
    engine: str
    ray_address: str
    shard_size: int
    batch_size: int
    workers: int
    threads: int
    split: str
    clip_seconds: float
    min_seconds: float
    max_seconds: float
    scene_threshold: float
    min_clip_seconds: float
    frames: int
    media: str
    frame_size: int
    asr_model: str
    asr_language: str
    asr_vad: bool
    asr_beam_size: int
    vision_captioner: str
    audio_captioner: str
    num_captions: int
    top_k: int
    caption_temperature: float
    caption_seed: int
    llm: str
    llm_prompt: str
    llm_batch_size: int
    llm_max_new_tokens: int
    progress: bool

    def __post_init__(self):
        for key in ("shard_size", "batch_size", "frames", "num_captions", "top_k", "threads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"labeling setting {key}: must be at least 1, got {getattr(self, key)}")
        if self.workers < 0:
            raise ConfigError(f"labeling setting workers: must be 0 or more, got {self.workers}")
        if self.vision_captioner in NO_MODEL and self.audio_captioner in NO_MODEL:
            raise ConfigError("labeling needs a vision or an audio captioner: set --vision_captioner and/or "
                              "--audio_captioner to a VAST captioner run folder or checkpoint")

    # --- each stage's own config -------------------------------------------------------------

    def split_config(self) -> SplitConfig:
        return SplitConfig(mode=self.split, clip_seconds=self.clip_seconds, min_seconds=self.min_seconds,
                           max_seconds=self.max_seconds, scene_threshold=self.scene_threshold)

    def decode_config(self) -> DecodeConfig:
        return DecodeConfig(frames=self.frames, audio=True)

    def asr_config(self) -> AsrConfig:
        return AsrConfig(model=self.asr_model, language=self.asr_language or None, beam_size=self.asr_beam_size,
                         vad=self.asr_vad, threads=self.threads)

    def captioner_configs(self) -> list[CaptionerConfig]:
        return [CaptionerConfig(model=model, group=group, num_captions=self.num_captions, top_k=self.top_k,
                                temperature=self.caption_temperature, seed=self.caption_seed, threads=self.threads)
                for group, model in (("tv", self.vision_captioner), ("ta", self.audio_captioner))
                if model not in NO_MODEL]

    def label_settings(self) -> dict:
        """The settings that change labels (not where or how fast they are made): a rerun into an
        output folder must use the same ones, or its shards would mix two kinds of labels."""
        speed_only = {"engine", "ray_address", "workers", "progress", "llm_batch_size"}
        return {k: v for k, v in asdict(self).items() if k not in speed_only}


def _schema(path: Path) -> dict:
    values = read_json(path, "labeling config")
    if not isinstance(values, dict):
        raise ConfigError(f"labeling config {path}: expected a JSON object of settings")
    return {k: v for k, v in values.items() if not k.startswith("_")}


def load_label_config(overrides: dict | None = None, path=None) -> LabelConfig:
    """The shipped settings (or `path`'s) with `overrides` ({key: value or [command-line tokens]})."""
    defaults = _schema(DEFAULT_CONFIG)
    values = dict(defaults)
    if path is not None:
        path = resolve_path(path)
        for key, value in _schema(path).items():
            values[_known(key, defaults, str(path))] = value
    for key, value in (overrides or {}).items():
        key = _known(key.replace("-", "_"), defaults, "command line")
        if isinstance(value, list):
            if len(value) != 1 and not (isinstance(defaults[key], bool) and not value):
                raise ConfigError(f"--{key}: expected one value, got {' '.join(value) or 'none'}")
            value = value[0] if value else True
        values[key] = value
    checked = {key: coerce(values[key], type(defaults[key]), f"labeling setting {key}", CHOICES.get(key))
               for key in defaults}
    missing = [f.name for f in fields(LabelConfig) if f.name not in checked]
    if missing:
        raise ConfigError(f"labeling config {DEFAULT_CONFIG}: missing {', '.join(missing)}; restore it from git")
    return LabelConfig(**{f.name: checked[f.name] for f in fields(LabelConfig)})


def _known(key: str, defaults: dict, where: str) -> str:
    if key not in defaults:
        raise ConfigError(f"{where}: unknown labeling setting {key!r}{suggest(key, defaults)}")
    return key
