"""Build the VAST model of a config and fill its weights: a VAST checkpoint, or pretrained towers."""

from __future__ import annotations

import logging

from vast.config import Config, resolve_path
from vast.errors import DataError
from vast.models.checkpoints import latest_model_checkpoint, load_weights, read_checkpoint
from vast.models.vast import VAST

logger = logging.getLogger(__name__)


def load_pretrained_towers(model: VAST, model_cfg) -> None:
    """Starting from scratch, the towers come from their own release files when the config names
    them (empty = random initialisation, as the demo's toy towers)."""
    from vast.models.audio import load_beats
    from vast.models.text import load_bert, minilm_path
    from vast.models.vision import load_evaclip_vision

    vision_weights = model.towers["vision"].weights
    if vision_weights:
        tower = load_evaclip_vision(resolve_path(vision_weights), model.vision_encoder_config,
                                    image_size=int(model_cfg["vision_resolution"]))
        model.vision_encoder.load_state_dict(tower.state_dict())
        logger.info("vision tower weights: %s", vision_weights)
    audio_weights = model.towers["audio"].weights
    if audio_weights:
        model.audio_encoder.load_state_dict(load_beats(resolve_path(audio_weights)).state_dict(), strict=False)
        logger.info("audio tower weights: %s", audio_weights)
    text_weights = model.towers["text"].weights
    if text_weights:
        path = minilm_path() if text_weights == "minilm_l6" else resolve_path(text_weights)
        bert = load_bert(path, add_cross_attention=False, with_lm_head=True)
        result = model.multimodal_encoder.load_state_dict(bert.state_dict(), strict=False)
        new = [k for k in result.missing_keys if "crossattention" not in k]
        logger.info("text weights: %s (cross-attention newly initialised%s)", text_weights,
                    f"; also missing {new[:3]}" if new else "")


def build_model(config: Config) -> VAST:
    run_cfg, model_cfg = config.run_cfg, config.model_cfg
    model = VAST(model_cfg)
    if run_cfg.checkpoint:
        load_weights(model, read_checkpoint(resolve_path(run_cfg.checkpoint)), str(run_cfg.checkpoint))
    elif run_cfg.pretrain_dir:
        path = latest_model_checkpoint(resolve_path(run_cfg.pretrain_dir))
        load_weights(model, read_checkpoint(path), str(path))
    else:
        try:
            load_pretrained_towers(model, model_cfg)
        except DataError as error:
            raise DataError(f"{error} (or set the weight key to \"\" to start from random weights)") from None
    return model
