"""`vast.load_model`: a VAST model in eval mode from a run folder or a single checkpoint file."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

from vast.config import MODEL_KEYS, RUN_KEYS, coerce, read_json, resolve_path, suggest
from vast.errors import ConfigError, DataError
from vast.models.checkpoints import latest_model_checkpoint, load_weights, read_checkpoint

logger = logging.getLogger(__name__)

# Keys a run derives from its data entries (frame / clip embedding table sizes).
DERIVED_KEYS = {"max_vision_sample_num": "vision_frame_embedding", "max_audio_sample_num": "audio_frame_embedding"}


def _original_qa_lengths(saved: dict) -> dict:
    """QA lengths of a run written by the original code, which has no QA length keys: it pads
    questions to max_caption_len and trains answers as `[CLS] answer [SEP]` in 10 tokens (so 9 after
    the [CLS], and 10 generated at test)."""
    lengths = {}
    if "max_question_len" not in saved:
        lengths["max_question_len"] = saved.get("max_caption_len", MODEL_KEYS["max_caption_len"].default)
    if "max_answer_len" not in saved:
        lengths["max_answer_len"] = 9
    return lengths


def locate_run(path: Path) -> tuple[Path, Path]:
    """(checkpoint file, hps.json path) for a run folder or a checkpoint inside `<run>/ckpt/`."""
    if path.is_dir():
        return latest_model_checkpoint(path), path / "log" / "hps.json"
    if path.is_file():
        return path, path.parent.parent / "log" / "hps.json"
    raise DataError(f"model not found: {path} (give a run folder with log/hps.json and ckpt/model_step_<N>.pt, "
                    "or a checkpoint file)")


def _coerce_key(key: str, value, where: str):
    if key in DERIVED_KEYS:
        return coerce(value, int, where)
    if key not in MODEL_KEYS:
        raise ConfigError(f"{where}: unknown model_cfg key{suggest(key, MODEL_KEYS)}")
    spec = MODEL_KEYS[key]
    return coerce(value, spec.kind, where, spec.choices)


def load_model_config(path, **overrides) -> tuple[dict, Path]:
    """The model_cfg a checkpoint was trained with: defaults < the run's log/hps.json < overrides."""
    checkpoint, hps_path = locate_run(resolve_path(path))
    cfg = {key: spec.default for key, spec in MODEL_KEYS.items()}
    if hps_path.is_file():
        hps = read_json(hps_path, "hps.json")
        saved = hps.get("model_cfg", {}) if isinstance(hps, dict) else {}
        ignored = sorted(k for k in saved if k not in MODEL_KEYS and k not in DERIVED_KEYS)
        if ignored:
            logger.info("%s: model_cfg keys this implementation does not use: %s", hps_path, ", ".join(ignored))
        saved = {k: v for k, v in saved.items() if k not in ignored}
        saved.update(_original_qa_lengths(saved))
        cfg.update({k: _coerce_key(k, v, f"{hps_path}: model_cfg.{k}") for k, v in saved.items()})
    else:
        logger.info("no %s beside the checkpoint: default model_cfg with the given overrides", hps_path)
    cfg.update({k: _coerce_key(k, v, f"load_model({k}=...)") for k, v in overrides.items()})
    return cfg, checkpoint


PRECISIONS = ("fp32", "run")


def run_precision(path) -> SimpleNamespace:
    """The fp16 / bf16 settings of the run that made a checkpoint (run_cfg of its log/hps.json; the
    defaults when it has none)."""
    _, hps_path = locate_run(resolve_path(path))
    saved = {}
    if hps_path.is_file():
        hps = read_json(hps_path, "hps.json")
        saved = hps.get("run_cfg", {}) if isinstance(hps, dict) else {}
    return SimpleNamespace(**{key: coerce(saved.get(key, RUN_KEYS[key].default), bool, f"{hps_path}: run_cfg.{key}")
                              for key in ("fp16", "bf16")})


def load_model(path, precision: str = "fp32", **model_cfg_overrides):
    """The VAST model of a run folder (log/hps.json + newest ckpt/model_step_<N>.pt) or of one
    checkpoint file, in eval mode. Encoder architectures come from the config (named types or
    `*_encoder_config` files) and every weight from the checkpoint: tower release files are not read.
    Frame / clip embedding tables take the checkpoint's sizes unless overridden. `precision`: "fp32",
    or "run": the autocast the run's own evaluation used on this device (its fp16 / bf16 settings;
    bf16 on a CPU only where the CPU has it natively), so scores equal the run's evaluation."""
    from vast.models.vast import VAST

    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}': use one of {', '.join(PRECISIONS)}")
    cfg, checkpoint = load_model_config(path, **model_cfg_overrides)
    state = read_checkpoint(checkpoint)
    for key, table in DERIVED_KEYS.items():
        stored = state.get(table)
        if stored is not None and key not in model_cfg_overrides:
            cfg[key] = int(stored.shape[1])
    model = VAST(cfg)
    load_weights(model, state, str(checkpoint))
    if precision == "run":
        model.run_precision = run_precision(path)
    return model.eval()
