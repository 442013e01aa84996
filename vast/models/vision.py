"""EVA-CLIP vision tower (timm's EVA implementation): named sizes, official checkpoint loading, frames.

The tower is `VisionTower.visual`, a timm `Eva` laid out exactly as EVA-CLIP's visual tower, so the
release file's `visual.*` keys (and VAST checkpoints' `vision_encoder.visual.*`) load without renaming.
VAST consumes every token after the final norm: `[N, 1+P, D]` per image.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.eva import Eva
from torch import nn

from vast.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# EVA-CLIP model-config schema: the projection width and the vision tower's shape.
VISION_CONFIGS: dict[str, dict] = {
    # EVA01-CLIP-g/14: width 1408, depth 40, 16 heads (head width 88), MLP 6144, patch 14.
    "evaclip01_giant": {"embed_dim": 1024, "vision_cfg": {
        "image_size": 224, "layers": 40, "width": 1408, "head_width": 88, "mlp_ratio": 4.3637, "patch_size": 14}},
    # The same architecture at toy size, for the demo and tests (random weights).
    "eva_tiny": {"embed_dim": 128, "vision_cfg": {
        "image_size": 64, "layers": 3, "width": 192, "head_width": 48, "mlp_ratio": 4.0, "patch_size": 16}},
}

# EVA-CLIP vision_cfg keys that change the architecture in ways this EVA01-style tower does not build.
_UNSUPPORTED = ("rope", "naiveswiglu", "subln", "postnorm", "use_rms_norm", "global_average_pool")


def _read_model_config(model_config) -> dict:
    if isinstance(model_config, dict):
        return model_config
    if isinstance(model_config, str) and model_config in VISION_CONFIGS:
        return VISION_CONFIGS[model_config]
    path = Path(model_config)
    if not path.is_file():
        raise ConfigError(
            f"vision encoder '{model_config}' is neither a known name ({', '.join(VISION_CONFIGS)}) "
            "nor an EVA-CLIP model-config JSON file"
        )
    return json.loads(path.read_text())


class VisionTower(nn.Module):
    """EVA ViT applied to images; `forward` returns every token after the final norm."""

    def __init__(self, model_config: dict | str, image_size: int | None = None):
        super().__init__()
        config = _read_model_config(model_config)
        vision_cfg = dict(config.get("vision_cfg", config))
        for key in _UNSUPPORTED:
            if vision_cfg.get(key):
                raise ConfigError(f"EVA-CLIP vision_cfg.{key} is not supported (EVA01-style towers only)")
        width = int(vision_cfg["width"])
        head_width = int(vision_cfg.get("head_width", 64))
        mlp_ratio = float(vision_cfg.get("mlp_ratio", 4.0))
        self.image_size = int(image_size or vision_cfg.get("image_size", 224))
        self.patch_size = int(vision_cfg.get("patch_size", 16))
        self.width = width
        self.visual = Eva(
            img_size=self.image_size, patch_size=self.patch_size, num_classes=int(config.get("embed_dim", width)),
            global_pool="token", embed_dim=width, depth=int(vision_cfg["layers"]), num_heads=width // head_width,
            # EVA01 sizes its MLP as int(width * mlp_ratio); timm does the same with the ratio it is given.
            mlp_ratio=int(width * mlp_ratio) / width, qkv_bias=bool(vision_cfg.get("qkv_bias", True)),
            drop_path_rate=float(vision_cfg.get("drop_path_rate", 0.0)),
            dynamic_img_size=False,
        )

    @property
    def num_tokens(self) -> int:
        return 1 + (self.image_size // self.patch_size) ** 2

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> tokens [N, 1+P, D] (cls first), after the final norm."""
        return self.visual.forward_features(images)


def create_vision_encoder(name_or_config, image_size: int | None = None) -> VisionTower:
    """A tower from a registry name, an EVA-CLIP model-config dict, or a model-config JSON path."""
    return VisionTower(name_or_config, image_size)


def convert_evaclip_state_dict(state_dict: dict, tower: VisionTower) -> dict:
    """Keep the release file's `visual.*` weights (the text tower is dropped), resizing pos_embed."""
    visual = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    if not visual:
        visual = {k: v for k, v in state_dict.items() if not k.startswith(("text.", "logit_scale"))}
    pos_embed = visual.get("pos_embed")
    target = tower.visual.pos_embed
    if pos_embed is not None and pos_embed.shape != target.shape:
        grid = tower.image_size // tower.patch_size
        visual["pos_embed"] = resample_abs_pos_embed(pos_embed, (grid, grid), num_prefix_tokens=1)
    return {f"visual.{k}": v for k, v in visual.items()}


def load_evaclip_vision(path, model_config=None, image_size: int | None = None) -> VisionTower:
    """The EVA-CLIP vision tower of an official release file, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"EVA-CLIP weights not found: {path} (put EVA01_CLIP_g_14_psz14_s11B.pt under pretrained_weights/clip/)")
    tower = VisionTower(model_config or "evaclip01_giant", image_size)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = state_dict.get("state_dict", state_dict.get("module", state_dict))
    missing, unexpected = tower.load_state_dict(convert_evaclip_state_dict(state_dict, tower), strict=False)
    if missing or unexpected:
        raise DataError(f"{path}: not an EVA-CLIP checkpoint of this size (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return tower.eval()
