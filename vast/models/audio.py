"""BEATs audio encoder: our own implementation, laid out like Microsoft's reference so its checkpoints load.

No library ships BEATs (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", 2022), so the
model is written here. It computes what the reference code (microsoft/unilm, `beats/`) computes and
uses its parameter names, so the official `{'cfg': ..., 'model': ...}` files (BEATs_iter3_plus_AS2M.pt)
and VAST checkpoints (`audio_encoder.*`) load strictly without renaming:

- front end: fbank [B, T, M] -> 16x16 patch Conv2d -> time-major tokens -> LayerNorm -> Linear(512, 768);
- encoder: weight-normed grouped Conv1d positional embedding (`pos_conv.0.weight_g/weight_v`), post-LN
  (DeepNorm) layers with T5-style bucketed relative position bias, gated per layer by the query (gru_rel_pos).

As in the reference, one relative-position table exists and every layer's `self_attn.relative_attention_bias`
is that same module, so a state dict carries it under each layer's key (the official files do too).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vast.data.media import compute_fbank
from vast.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# Defaults: the iter3 architecture, as some copies of VAST's BEATs file set them. Microsoft's upstream
# defaults differ (input_patch_size -1, deep_norm / relative_position_embedding / gru_rel_pos False,
# max_distance 1280, no input dropout or layerdrop). VAST itself builds the encoder from the checkpoint's
# own cfg (`BEATsConfig(checkpoint['cfg'])`, then a strict load), and so does load_beats; the released
# cfg dicts set every architecture key, so the defaults never decide a loaded model's shape.
_CONFIG_DEFAULTS: dict = {
    "input_patch_size": 16,  # patch size of the fbank patch embedding
    "embed_dim": 512,  # patch embedding width
    "conv_bias": False,  # bias in the patch embedding
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_wise_gradient_decay_ratio": 1.0,  # gradient into layer i is scaled by this once per layer above
    "layer_norm_first": False,
    "deep_norm": True,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.05,
    "dropout_input": 0.1,
    "conv_pos": 128,  # kernel of the convolutional positional embedding
    "conv_pos_groups": 16,
    "relative_position_embedding": True,
    "num_buckets": 320,
    "max_distance": 800,
    "gru_rel_pos": True,
    "finetuned_model": False,  # True adds the AudioSet classifier (`predictor`), which VAST never uses
    "predictor_dropout": 0.1,
    "predictor_class": 527,
}

_ITER3 = {
    **_CONFIG_DEFAULTS,
    # The cfg stored in BEATs_iter3_plus_AS2M.pt (pre-trained, not fine-tuned); only training is affected
    # by these values, and load_beats uses the file's own cfg.
    "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "dropout_input": 0.0,
    "encoder_layerdrop": 0.05, "layer_wise_gradient_decay_ratio": 0.6,
}

AUDIO_CONFIGS: dict[str, dict] = {
    "beats_iter3": _ITER3,
    "beats": _ITER3,  # the name old VAST configs use
    # The same architecture at toy size, for the demo and tests (random weights).
    "beats_tiny": {
        **_ITER3,
        "embed_dim": 64, "encoder_embed_dim": 128, "encoder_layers": 2, "encoder_attention_heads": 4,
        "encoder_ffn_embed_dim": 256, "conv_pos": 16, "conv_pos_groups": 4, "num_buckets": 64, "max_distance": 128,
    },
}


class BEATsConfig:
    """The reference's config object: official keys, built from a dict; unknown keys are ignored."""

    def __init__(self, cfg: dict | None = None):
        for key, default in _CONFIG_DEFAULTS.items():
            setattr(self, key, default)
        cfg = dict(cfg or {})
        ignored = sorted(set(cfg) - set(_CONFIG_DEFAULTS))
        if ignored:
            logger.debug("BEATs cfg: ignoring keys %s", ignored)
        for key in _CONFIG_DEFAULTS.keys() & cfg.keys():
            setattr(self, key, _coerce(key, cfg[key]))
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ConfigError(
                f"BEATs cfg: encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        if self.deep_norm and self.layer_norm_first:
            raise ConfigError("BEATs cfg: deep_norm needs the post-LN layout (layer_norm_first false)")
        if self.activation_fn not in _ACTIVATIONS:
            raise ConfigError(f"BEATs cfg: activation_fn '{self.activation_fn}' is not one of {sorted(_ACTIVATIONS)}")

    def to_dict(self) -> dict:
        return {key: getattr(self, key) for key in _CONFIG_DEFAULTS}

    def __eq__(self, other) -> bool:
        return isinstance(other, BEATsConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"BEATsConfig({self.to_dict()})"


def _coerce(key: str, value):
    default = _CONFIG_DEFAULTS[key]
    if isinstance(default, bool):
        if not isinstance(value, (bool, int)):
            raise ConfigError(f"BEATs cfg: {key} must be true or false, got {value!r}")
        return bool(value)
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        raise ConfigError(f"BEATs cfg: {key} must be a {type(default).__name__}, got {value!r}") from None


def _gelu(x: torch.Tensor) -> torch.Tensor:
    # The reference evaluates GELU in float32 even under reduced-precision autocast.
    return F.gelu(x.float()).type_as(x)


_ACTIVATIONS = {
    "gelu": _gelu,
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times `scale` backward (layer-wise gradient decay)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5 bidirectional buckets of (key - query) offsets: half the buckets per sign, the first half of
    each exact, the rest logarithmic up to `max_distance`, beyond which offsets share the last bucket."""
    half = num_buckets // 2
    buckets = (relative_position > 0).long() * half
    distance = relative_position.abs()
    max_exact = half // 2
    # Same float32 expression and order as the reference, so boundary distances fall in the same bucket.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class SamePad(nn.Module):
    """Drops the extra last frame an even kernel with padding k//2 produces, so output length == input length."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.remove] if self.remove else x


class WeightNormConv1d(nn.Module):
    """Same-channel grouped Conv1d (padding k//2) whose weight is g * v / ||v||, the norm taken over
    all dims but the kernel axis (weight norm with dim=2).

    Parameters are `weight_g` [1, 1, K], `weight_v` [C, C/groups, K] and `bias` [C], the names the old
    `torch.nn.utils.weight_norm` gave them and that the BEATs checkpoints store.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel_size))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))

    def weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / torch.linalg.vector_norm(self.weight_v, dim=(0, 1), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T] -> [B, C, T + 1 - K % 2]."""
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class MultiheadAttention(nn.Module):
    """Self-attention with an additive relative position bias, optionally gated by the query."""

    def __init__(self, dim: int, heads: int, dropout: float, gru_rel_pos: bool, max_distance: int):
        super().__init__()
        self.heads = heads
        self.max_distance = max_distance
        self.head_dim = dim // heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos = gru_rel_pos
        if gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))
        # Set by the encoder: the table that all layers share (None without relative positions).
        self.relative_attention_bias: nn.Embedding | None = None

    def position_bias(self, length: int) -> torch.Tensor:
        """Bucketed relative position bias for a sequence of `length` tokens: [H, T, T]."""
        table = self.relative_attention_bias
        # Buckets are computed on the CPU, as the reference does, whatever device holds the table: the
        # float32 log of another backend could round an offset that sits near a bucket edge differently.
        positions = torch.arange(length)
        relative = positions[None, :] - positions[:, None]  # [T(query), T(key)]: key - query
        buckets = relative_position_bucket(relative, table.num_embeddings, self.max_distance)
        return table(buckets.to(table.weight.device)).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, D], position_bias [H, T, T] or None -> [B, T, D]."""
        batch, length, dim = x.shape
        q, k, v = (
            proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        bias = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)  # [1, H, T, T]
            if self.gru_rel_pos:
                # The reference scales q by head_dim**-0.5 / 32, then multiplies the gate's input back
                # by 32 / head_dim**-0.5: the gate sees the unscaled projected query.
                gate_a, gate_b = torch.sigmoid(
                    self.grep_linear(q).view(batch, self.heads, length, 2, 4).sum(-1)
                ).chunk(2, dim=-1)  # each [B, H, T, 1]
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias  # [B, H, T, T]
            bias = bias.to(q.dtype)
        # The reference's other use of 32 (logits computed as (q k / 32 - rowmax) * 32) is an fp16 overflow
        # guard that leaves the softmax unchanged; the fused kernel is stable on its own.
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0, scale=self.scaling
        )  # [B, H, T, hd]
        return self.out_proj(attn.transpose(1, 2).reshape(batch, length, dim))


class TransformerEncoderLayer(nn.Module):
    """One BEATs layer: post-LN with DeepNorm residual scaling (or pre-LN when layer_norm_first)."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = MultiheadAttention(
            dim, cfg.encoder_attention_heads, cfg.attention_dropout, cfg.gru_rel_pos, cfg.max_distance
        )
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.activation_dropout)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.activation = _ACTIVATIONS[cfg.activation_fn]
        self.layer_norm_first = cfg.layer_norm_first
        self.residual_scale = (2 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout3(self.fc2(self.dropout2(self.activation(self.fc1(x)))))

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]."""
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), position_bias))
            return x + self._feed_forward(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.residual_scale + self.dropout1(self.self_attn(x, position_bias)))
        return self.final_layer_norm(x * self.residual_scale + self._feed_forward(x))


class TransformerEncoder(nn.Module):
    """Convolutional positional embedding, then the layers; `encoder.*` in the checkpoints."""

    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, cfg.conv_pos, cfg.conv_pos_groups), SamePad(cfg.conv_pos), nn.GELU())
        self.layers = nn.ModuleList(TransformerEncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.relative_position_embedding = cfg.relative_position_embedding and cfg.encoder_layers > 0
        if self.relative_position_embedding:
            table = nn.Embedding(cfg.num_buckets, cfg.encoder_attention_heads)
            for layer in self.layers:
                layer.self_attn.relative_attention_bias = table
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = cfg.layer_norm_first
        self.dropout = cfg.dropout
        self.layerdrop = cfg.encoder_layerdrop
        self.gradient_decay = cfg.layer_wise_gradient_decay_ratio
        self.grad_checkpointing = False
        self.register_load_state_dict_pre_hook(_fill_shared_bias_keys)
        self._init_weights(cfg)

    @torch.no_grad()
    def _init_weights(self, cfg: BEATsConfig) -> None:
        """The reference's initialisation (BERT-style normal(0.02), DeepNorm-scaled xavier, weight-normed conv)."""
        conv = self.pos_conv[0]
        nn.init.normal_(conv.weight_v, mean=0.0, std=math.sqrt(4.0 / (cfg.conv_pos * cfg.encoder_embed_dim)))
        conv.weight_g.copy_(torch.linalg.vector_norm(conv.weight_v, dim=(0, 1), keepdim=True))  # weight == v
        nn.init.zeros_(conv.bias)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if cfg.deep_norm:
            beta = (8 * cfg.encoder_layers) ** -0.25
            for layer in self.layers:
                attn = layer.self_attn
                for weight, gain in ((attn.k_proj.weight, 1.0), (attn.v_proj.weight, beta), (attn.q_proj.weight, 1.0),
                                     (attn.out_proj.weight, beta), (layer.fc1.weight, beta), (layer.fc2.weight, beta)):
                    nn.init.xavier_normal_(weight, gain=gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]."""
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = F.dropout(x, p=self.dropout, training=self.training)
        # Computed once from the shared table (the reference computes it in layer 0 and passes it on).
        position_bias = self.layers[0].self_attn.position_bias(x.shape[1]) if self.relative_position_embedding else None
        checkpointing = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if self.gradient_decay != 1.0:
                x = _ScaleGrad.apply(x, self.gradient_decay)
            if self.training and self.layerdrop > 0 and torch.rand(()).item() <= self.layerdrop:
                continue
            if checkpointing:
                x = checkpoint(layer, x, position_bias, use_reentrant=False)
            else:
                x = layer(x, position_bias)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


def _fill_shared_bias_keys(module, state_dict, prefix, *args) -> None:
    """Accept state dicts that store the shared relative-position table only under layer 0."""
    first = f"{prefix}layers.0.self_attn.relative_attention_bias.weight"
    if not getattr(module, "relative_position_embedding", False) or first not in state_dict:
        return
    for index in range(1, len(module.layers)):
        state_dict.setdefault(f"{prefix}layers.{index}.self_attn.relative_attention_bias.weight", state_dict[first])


class BEATs(nn.Module):
    """BEATs: normalised fbank [B, T, M] -> audio tokens [B, (T/16)*(M/16), D], time-major."""

    def __init__(self, cfg: BEATsConfig | dict | None = None):
        super().__init__()
        self.cfg = cfg if isinstance(cfg, BEATsConfig) else BEATsConfig(cfg)
        cfg = self.cfg
        self.width = cfg.encoder_embed_dim
        self.patch_size = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(
            1, cfg.embed_dim, kernel_size=cfg.input_patch_size, stride=cfg.input_patch_size, bias=cfg.conv_bias
        )
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim) if cfg.embed_dim != cfg.encoder_embed_dim else None
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = TransformerEncoder(cfg)
        if cfg.finetuned_model:
            # The AudioSet classifier of fine-tuned checkpoints: kept so they load strictly, never used by VAST.
            self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)
        else:
            self.predictor = None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in the backward pass (training only) to save activation memory."""
        self.encoder.grad_checkpointing = enable

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """fbank [B, T, M], already normalised -> tokens [B, P, D], P = (T // p) * (M // p), p the patch size (16).

        As in the reference, the strided patch convolution drops the last T % p frames and M % p bins.
        """
        patches = self.patch_embedding(fbank.unsqueeze(1).to(self.patch_embedding.weight.dtype))  # [B, C, T/16, M/16]
        tokens = self.layer_norm(patches.flatten(2).transpose(1, 2))  # [B, P, C], time-major
        if self.post_extract_proj is not None:
            tokens = self.post_extract_proj(tokens)
        return self.encoder(self.dropout_input(tokens))  # [B, P, D]

    def extract_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform [B, S] at 16 kHz in [-1, 1] -> tokens [B, P, D], with BEATs' own 128-bin fbank.

        Every waveform in the batch has the same length (no padding mask, which VAST never uses). Unlike
        the reference's method of the same name, this returns the tokens even for a fine-tuned checkpoint;
        the AudioSet head (`predictor`) is not applied.
        """
        fbank = torch.stack([compute_fbank(wave, melbins=128) for wave in waveform.float()])  # [B, T, 128]
        return self(fbank)


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Some older checkpoints pickle Python objects beside the tensors (an argparse Namespace or a
        # training-state object), which the safe loader refuses; such files need the full unpickler.
        logger.warning("%s: cannot be read with weights_only=True; loading it with the full unpickler", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def _checkpoint_parts(path: Path) -> tuple[dict, dict]:
    checkpoint_data = _torch_load(path)
    if not isinstance(checkpoint_data, dict) or "cfg" not in checkpoint_data or "model" not in checkpoint_data:
        raise DataError(f"{path}: not a BEATs checkpoint (expected a dict with 'cfg' and 'model')")
    cfg = checkpoint_data["cfg"]
    return (cfg if isinstance(cfg, dict) else vars(cfg)), checkpoint_data["model"]


def create_audio_encoder(name_or_cfg) -> BEATs:
    """A randomly initialised BEATs from a registry name, a cfg dict, a cfg JSON file, or a BEATs
    checkpoint (its cfg only; use `load_beats` for the weights)."""
    if isinstance(name_or_cfg, (BEATsConfig, dict)):
        return BEATs(name_or_cfg)
    if isinstance(name_or_cfg, str) and name_or_cfg in AUDIO_CONFIGS:
        return BEATs(AUDIO_CONFIGS[name_or_cfg])
    path = Path(name_or_cfg)
    if not path.is_file():
        raise ConfigError(
            f"audio encoder '{name_or_cfg}' is neither a known name ({', '.join(AUDIO_CONFIGS)}) "
            "nor a BEATs cfg JSON or checkpoint file"
        )
    if path.suffix == ".json":
        cfg = json.loads(path.read_text())
        return BEATs(cfg.get("cfg", cfg))
    return BEATs(_checkpoint_parts(path)[0])


def load_beats(path) -> BEATs:
    """An official BEATs checkpoint (`{'cfg', 'model'}`) as a module with its weights, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"BEATs weights not found: {path} (put BEATs_iter3_plus_AS2M.pt under pretrained_weights/beats/)")
    cfg, state_dict = _checkpoint_parts(path)
    model = BEATs(cfg)
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise DataError(f"{path}: weights do not match its cfg ({str(error).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise DataError(
            f"{path}: weights do not match its cfg (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()
