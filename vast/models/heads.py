"""Contrastive and matching heads (parameter names as in the released VAST checkpoints)."""

from __future__ import annotations

import torch
from torch import nn


class ContrastiveHead(nn.Module):
    """Projects one modality's pooled feature to the shared space: `linear.weight`, no bias."""

    def __init__(self, input_dim: int, contra_dim: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, contra_dim, bias=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled)


class MatchHead(nn.Module):
    """Two-way match/no-match logits from the fused [CLS]: linear1 -> GELU -> layernorm -> linear2."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear1 = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.GELU()  # erf GELU, as the original
        self.layernorm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.linear2 = nn.Linear(hidden_size, 2)

    def forward(self, cls_token: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.layernorm(self.activation(self.linear1(cls_token))))
