"""The towers' settings (`TowerConfig`): which encoder each modality uses, where its release weights
are, and whether it trains; read from model_cfg once, at the model's boundary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vast.config import resolve_path


@dataclass(frozen=True)
class TowerConfig:
    encoder: str  # a named size (`eva_tiny`, `beats`, `minilm_l6`, ...) or a config / checkpoint / folder path
    weights: str  # release weights to start from when training from scratch; "" = random initialisation
    frozen: bool
    checkpointing: bool


def _encoder(model_cfg: Mapping, kind: str, type_key: str) -> str:
    """An explicit `<kind>_encoder_config` (JSON / checkpoint / folder) wins over the named type."""
    explicit = model_cfg[f"{kind}_encoder_config"]
    return str(resolve_path(explicit)) if explicit else model_cfg[type_key]


def tokenizer_source(model_cfg: Mapping) -> str:
    """Where the tokenizer comes from: a `text_encoder_config` folder that holds a vocabulary (a
    bert-base-uncased folder with config.json and vocab.txt, say), else the text weights, else the
    named text encoder."""
    explicit = model_cfg["text_encoder_config"]
    if explicit:
        folder = resolve_path(explicit)
        if folder.is_dir() and any((folder / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
            return str(folder)
    return model_cfg["text_encoder_weights"] or model_cfg["multimodal_encoder_type"]


def tower_configs(model_cfg: Mapping) -> dict[str, TowerConfig]:
    """`vision`, `audio` and `text` (the BERT that encodes text and subtitles and fuses) towers."""
    checkpointing = bool(model_cfg["checkpointing"])
    return {
        "vision": TowerConfig(_encoder(model_cfg, "vision", "vision_encoder_type"),
                              model_cfg["vision_encoder_weights"], bool(model_cfg["frozen_vision"]), checkpointing),
        "audio": TowerConfig(_encoder(model_cfg, "audio", "audio_encoder_type"),
                             model_cfg["audio_encoder_weights"], bool(model_cfg["frozen_audio"]), checkpointing),
        "text": TowerConfig(_encoder(model_cfg, "text", "multimodal_encoder_type"),
                            model_cfg["text_encoder_weights"], False, checkpointing),
    }
