"""EVA-CLIP vision tower (timm's EVA implementation): named sizes, official checkpoint loading, frames.

The tower is `VisionTower.visual`, a timm `Eva` laid out exactly as EVA-CLIP's visual tower, so the
release file's `visual.*` keys (and VAST checkpoints' `vision_encoder.visual.*`) load without renaming.
VAST consumes every token after the final norm: `[N, 1+P, D]` per image.

Position embeddings are resized by `resize_pos_embed`, not timm's `resample_abs_pos_embed`: timm
antialiases when it shrinks a grid, while EVA-CLIP (bicubic) and VAST's own checkpoint loader
(bilinear) call a plain `F.interpolate`; the two differ by up to ~0.3 on random embeddings.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
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

# EVA-CLIP vision_cfg keys that change the architecture in ways this EVA01-style tower does not build
# (global_average_pool swaps the final norm for a norm of the mean token; timm_model_name builds a timm
# backbone instead). Keys read below change the tower; `xattn` and `fusedLN` only pick a kernel for the
# same maths, `eva_model_name`, `pt_hw_seq_len` and `intp_freq` have no effect without rope.
_UNSUPPORTED = ("rope", "naiveswiglu", "subln", "postnorm", "use_rms_norm", "global_average_pool", "timm_model_name")


def _square_size(value) -> int:
    """EVA-CLIP allows an [H, W] image_size, but its position-embedding resize assumes a square grid."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"image_size {list(value)}: only square images are supported")
        value = value[0]
    return int(value)


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
        if not isinstance(vision_cfg.get("layers"), int):
            raise ConfigError(f"EVA-CLIP vision_cfg.layers must be an int (got {vision_cfg.get('layers')!r}; "
                              "a list builds a ResNet)")
        width = int(vision_cfg["width"])
        head_width = int(vision_cfg.get("head_width", 64))
        if width % head_width:
            raise ConfigError(f"EVA-CLIP vision_cfg.width {width} is not a multiple of head_width {head_width}")
        # EVA-CLIP's layer scale exists only for a positive ls_init_value; timm's for any non-None one.
        layer_scale = vision_cfg.get("ls_init_value")
        self.image_size = _square_size(image_size or vision_cfg.get("image_size", 224))
        self.patch_size = int(vision_cfg.get("patch_size", 16))
        self.width = width
        self.visual = Eva(
            img_size=self.image_size, patch_size=self.patch_size, num_classes=int(config.get("embed_dim", width)),
            global_pool="token", embed_dim=width, depth=vision_cfg["layers"], num_heads=width // head_width,
            # both size the MLP as int(width * mlp_ratio) with the ratio as given (4.3637: 1408 -> 6144)
            mlp_ratio=float(vision_cfg.get("mlp_ratio", 4.0)), qkv_bias=bool(vision_cfg.get("qkv_bias", True)),
            init_values=float(layer_scale) if layer_scale and layer_scale > 0 else None,
            patch_drop_rate=float(vision_cfg.get("patch_dropout") or 0.0),
            drop_path_rate=float(vision_cfg.get("drop_path_rate") or 0.0),
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


def resize_pos_embed(pos_embed: torch.Tensor, grid: int, mode: str = "bicubic") -> torch.Tensor:
    """pos_embed [1, 1+S*S, D] -> [1, 1+grid*grid, D]: the cls entry kept, the S x S patch grid resampled.

    A plain `F.interpolate` (align_corners=False, no antialiasing) in the tensor's own dtype, so an fp16
    release file rounds exactly as EVA-CLIP's loader rounds it. `mode` is "bicubic" for EVA-CLIP release
    files and "bilinear" for VAST checkpoints, as the original code resizes each.
    """
    positions = pos_embed.shape[1] - 1
    side = math.isqrt(positions)
    if side * side != positions:
        raise DataError(f"pos_embed has {positions} patch positions, not a square grid")
    if side == grid:
        return pos_embed
    cls_pos = pos_embed[:, :1]  # [1, 1, D]
    patch_pos = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # [1, D, S, S], row-major grid
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode=mode, align_corners=False)
    return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)  # [1, 1+grid*grid, D]


def convert_evaclip_state_dict(state_dict: dict, tower: VisionTower) -> dict:
    """Keep the release file's `visual.*` weights (the text tower is dropped), fitted to the tower's size."""
    visual = {k[len("visual."):]: v for k, v in state_dict.items() if k.startswith("visual.")}
    if not visual:
        visual = {k: v for k, v in state_dict.items() if not k.startswith(("text.", "logit_scale"))}
    if "pos_embed" in visual:
        visual["pos_embed"] = resize_pos_embed(visual["pos_embed"], tower.image_size // tower.patch_size)
    kernel = visual.get("patch_embed.proj.weight")
    patch = tuple(tower.visual.patch_embed.proj.weight.shape[-2:])
    if kernel is not None and tuple(kernel.shape[-2:]) != patch:
        # EVA-CLIP resamples the patch kernel the same way when the checkpoint's patch size differs
        visual["patch_embed.proj.weight"] = F.interpolate(kernel.float(), size=patch, mode="bicubic",
                                                          align_corners=False)
    return {f"visual.{k}": v for k, v in visual.items()}


def load_evaclip_vision(path, model_config=None, image_size: int | None = None) -> VisionTower:
    """The EVA-CLIP vision tower of an official release file, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"EVA-CLIP weights not found: {path} (put EVA01_CLIP_g_14_psz14_s11B.pt under pretrained_weights/clip/)")
    tower = VisionTower(model_config or "evaclip01_giant", image_size)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "module", "state_dict"):  # the wrappers EVA-CLIP's loader looks through, in its order
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    state_dict = convert_evaclip_state_dict(state_dict, tower)
    own = tower.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state_dict.items()
                  if k in own and v.shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise DataError(f"{path}: not an EVA-CLIP checkpoint of this size (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}, shapes {mismatched[:2]})")
    tower.load_state_dict(state_dict)
    return tower.eval()
