"""Model checkpoints: atomic save, load with the original VAST key layout, embedding resizing."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vast.errors import DataError

logger = logging.getLogger(__name__)

# Keys of the original checkpoints that this model deliberately does not keep.
DROPPED_PREFIXES = ("vision_encoder.text.", "vision_encoder.logit_scale")
FRAME_EMBEDDINGS = ("vision_frame_embedding", "audio_frame_embedding")


def atomic_save(obj, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename makes it visible
    os.replace(tmp, path)


def read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which one
        raise DataError(f"{path}: cannot be read as a PyTorch checkpoint ({type(error).__name__}: {error})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def latest_model_checkpoint(run_dir) -> Path:
    """`run_dir/ckpt/model_step_<N>.pt` with the largest N."""
    ckpt_dir = Path(run_dir) / "ckpt"
    steps = []
    for path in ckpt_dir.glob("model_step_*.pt"):
        match = re.fullmatch(r"model_step_(\d+)\.pt", path.name)
        if match:
            steps.append((int(match.group(1)), path))
    if not steps:
        raise DataError(f"no ckpt/model_step_<N>.pt in {run_dir}")
    return max(steps)[1]


def _resize_frame_embedding(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # nearest, as the original resizes these tables when the frame / clip count differs
    resized = F.interpolate(value.float().permute(0, 2, 1), target.shape[1], mode="nearest")
    return resized.permute(0, 2, 1).to(target.dtype)


def load_weights(model: nn.Module, state: dict, source: str = "checkpoint") -> tuple[list[str], list[str]]:
    """Load a VAST state dict (original or ours) into `model`, non-strict, with one summary line."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}
    for name in FRAME_EMBEDDINGS:
        if name in state and name in own and state[name].shape != own[name].shape:
            state[name] = _resize_frame_embedding(state[name], own[name])
    pos_key = "vision_encoder.visual.pos_embed"
    if pos_key in state and pos_key in own and state[pos_key].shape != own[pos_key].shape:
        from vast.models.vision import resize_pos_embed

        # the original resizes a VAST checkpoint's grid bilinearly in fp32 (not bicubic, as for EVA-CLIP's file)
        grid = int((own[pos_key].shape[1] - 1) ** 0.5)
        state[pos_key] = resize_pos_embed(state[pos_key].float(), grid, mode="bilinear")
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise DataError(f"{source}: shapes differ from this model for {len(mismatched)} tensors, e.g. "
                        f"{mismatched[0]} {tuple(state[mismatched[0]].shape)} vs {tuple(own[mismatched[0]].shape)}; "
                        "check the encoder types / sizes in model_cfg")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("cls.predictions.decoder.weight")]
    logger.info("loaded %s: %d tensors; missing %d%s; unexpected %d%s", source, len(state) - len(result.unexpected_keys),
                len(missing), f" (e.g. {missing[:3]})" if missing else "",
                len(result.unexpected_keys), f" (e.g. {result.unexpected_keys[:3]})" if result.unexpected_keys else "")
    return missing, list(result.unexpected_keys)
