"""Attention masks (bidirectional, causal, prefix) and the key-value cache of the text BERT.

Masks are additive, as in the original BERT code: allowed positions get 0 and masked ones -10000.0
(not -inf, so a row with every key masked still gives finite numbers, matching released checkpoints).
"""

from __future__ import annotations

import torch

MASK_MODES = ("bidirectional", "causal", "prefix")
MASKED_VALUE = -10000.0


def self_attention_allowed(
    key_padding_mask: torch.Tensor | None,
    query_length: int,
    mask_mode: str = "bidirectional",
    prefix_lengths: torch.Tensor | int | None = None,
    past_length: int = 0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Which keys each query may see: bool [B or 1, L, past+L].

    Queries are the `query_length` newest tokens, at absolute positions past_length .. past_length+L-1.
    bidirectional: every non-pad key. causal: keys at positions <= the query's. prefix: keys before
    `prefix_lengths[b]` are visible to everyone, the rest causally; so prefix tokens attend to the
    whole prefix (bidirectionally) and later tokens to the prefix and earlier tokens.
    """
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
    key_length = past_length + query_length
    if key_padding_mask is not None:
        if key_padding_mask.shape[-1] != key_length:
            raise ValueError(
                f"attention_mask covers {key_padding_mask.shape[-1]} positions; expected {key_length} "
                f"({past_length} cached + {query_length} new)"
            )
        device = key_padding_mask.device
    keys_valid = (
        key_padding_mask.bool()[:, None, :]  # [B, 1, K]
        if key_padding_mask is not None
        else torch.ones(1, 1, key_length, dtype=torch.bool, device=device)
    )
    if mask_mode == "bidirectional":
        return keys_valid.expand(-1, query_length, -1)

    query_pos = torch.arange(past_length, key_length, device=device)[:, None]  # [L, 1]
    key_pos = torch.arange(key_length, device=device)[None, :]  # [1, K]
    allowed = key_pos <= query_pos  # [L, K]
    if mask_mode == "prefix":
        if prefix_lengths is None:
            raise ValueError("mask_mode='prefix' needs prefix_lengths")
        prefix_lengths = torch.as_tensor(prefix_lengths, device=device).reshape(-1, 1, 1)  # [B or 1, 1, 1]
        allowed = allowed[None] | (key_pos[None] < prefix_lengths)  # [B, L, K]
    return allowed & keys_valid


def to_additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool [B, L, K] (or [B, K] for key padding) -> additive float [B, 1, L, K] for every head."""
    if allowed.dim() == 2:
        allowed = allowed[:, None, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed.bool(), MASKED_VALUE)[:, None]


def build_self_attention_mask(
    key_padding_mask: torch.Tensor | None,
    query_length: int,
    mask_mode: str,
    prefix_lengths: torch.Tensor | int | None,
    past_length: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Additive self-attention mask [B or 1, 1, L, K], or None when nothing is masked."""
    if mask_mode == "bidirectional" and key_padding_mask is None:
        return None
    allowed = self_attention_allowed(key_padding_mask, query_length, mask_mode, prefix_lengths, past_length, device)
    return to_additive(allowed, dtype)


class KVCache:
    """Per-layer keys/values for incremental decoding, all shaped [B, heads, T, head_dim].

    Self-attention keys/values grow by the new tokens on every call; the cross-attention keys/values
    of the fusion memory (and its additive mask [B, 1, 1, M]) are computed on the first call that has a
    memory and reused afterwards. Calls update the cache in place. `reorder` and `repeat_interleave`
    act on the batch dimension, for beam search.
    """

    def __init__(self, num_layers: int):
        self.self_keys: list[torch.Tensor | None] = [None] * num_layers
        self.self_values: list[torch.Tensor | None] = [None] * num_layers
        self.cross_keys: list[torch.Tensor | None] = [None] * num_layers
        self.cross_values: list[torch.Tensor | None] = [None] * num_layers
        self.memory_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.seq_length

    @property
    def seq_length(self) -> int:
        """Number of cached text positions."""
        return 0 if self.self_keys[0] is None else self.self_keys[0].shape[2]

    @property
    def has_memory(self) -> bool:
        return self.cross_keys[0] is not None

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' keys/values of one layer; return cached + new."""
        if self.self_keys[layer] is not None:
            keys = torch.cat([self.self_keys[layer], keys], dim=2)
            values = torch.cat([self.self_values[layer], values], dim=2)
        self.self_keys[layer], self.self_values[layer] = keys, values
        return keys, values

    def truncate(self, length: int) -> "KVCache":
        """Forget the self-attention keys/values after the first `length` positions."""
        for store in (self.self_keys, self.self_values):
            for i, tensor in enumerate(store):
                if tensor is not None:
                    store[i] = tensor[:, :, :length]
        return self

    def _map(self, fn) -> "KVCache":
        for store in (self.self_keys, self.self_values, self.cross_keys, self.cross_values):
            for i, tensor in enumerate(store):
                if tensor is not None:
                    store[i] = fn(tensor)
        if self.memory_mask is not None:
            self.memory_mask = fn(self.memory_mask)
        return self

    def reorder(self, index: torch.Tensor) -> "KVCache":
        """Keep batch rows `index` (e.g. the beams that survived a beam-search step)."""
        return self._map(lambda t: t.index_select(0, index.to(t.device)))

    def repeat_interleave(self, repeats: int) -> "KVCache":
        """Repeat each batch row `repeats` times (row b -> rows b*n .. b*n+n-1)."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))
