"""Random draws of the objectives as a fixed function of (seed, step, sample, purpose).

Hard negatives, the random-negative share, subtitle swaps and caption / answer masking draw from
hashed integer keys instead of a generator's stream. A draw for a sample is then the same whichever
process holds it, whichever micro-step it falls in and wherever it sits in the gathered batch: a run
on 2 processes at micro-batch b draws exactly what 1 process at batch 2b draws, and a resumed run
draws what the uninterrupted one did. Dropout and drop-path still use torch's generator.
"""

from __future__ import annotations

import zlib

import torch

MASK32 = 0xFFFFFFFF

# one salt per purpose, so that two draws for the same sample and step are independent
NEGATIVE_CLIP, NEGATIVE_TEXT, RANDOM_NEGATIVE, SUBTITLE_SWAP, SUBTITLE_DONOR, CAPTION_MASK, QA_MASK = range(1, 8)


def sample_codes(ids: list[str], device) -> torch.Tensor:
    """Stable integer codes of sample ids (crc32), the same on every process."""
    return torch.tensor([zlib.crc32(str(i).encode()) for i in ids], dtype=torch.long, device=device)


def _mix(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding 32-bit values (products wrap; the
    mask keeps the low 32 bits, which two's complement leaves exact)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def hashed_uniform(*keys) -> torch.Tensor:
    """Values in (0, 1), one per element of the keys broadcast together; a fixed function of the keys."""
    tensors = [k for k in keys if isinstance(k, torch.Tensor)]
    device = tensors[0].device if tensors else None
    h = torch.zeros((), dtype=torch.long, device=device)
    for key in keys:
        key = torch.as_tensor(key, dtype=torch.long, device=device) & MASK32
        h = _mix((h * 0x01000193 + key) & MASK32)
    return (h.double() + 0.5) / 2.0 ** 32


class Draws:
    """The draws of one training step (seed and step fixed); see the module docstring."""

    def __init__(self, seed: int, step: int):
        self.seed, self.step = int(seed), int(step)

    def rows(self, codes: torch.Tensor, width: int, purpose: int) -> torch.Tensor:
        """[n, width] uniforms for each sample and position (position j's value does not depend on width)."""
        positions = torch.arange(width, device=codes.device)
        return hashed_uniform(self.seed, self.step, purpose, codes[:, None], positions[None, :]).float()

    def masking(self, codes: torch.Tensor, width: int, purpose: int) -> torch.Tensor:
        """[3, n, width] uniforms for token masking (choose, action, random token) of each sample and position."""
        positions = torch.arange(width, device=codes.device)
        kinds = torch.arange(3, device=codes.device)
        return hashed_uniform(self.seed, self.step, purpose, kinds[:, None, None], codes[None, :, None],
                              positions[None, None, :]).float()

    def pairs(self, row_codes: torch.Tensor, column_codes: torch.Tensor, purpose: int) -> torch.Tensor:
        """[n, N] uniforms for each (row sample, column sample) pair."""
        return hashed_uniform(self.seed, self.step, purpose, row_codes[:, None], column_codes[None, :]).float()


def gumbel_argmax(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One index per row drawn from softmax(logits) (Gumbel-max with the given uniforms); -inf logits
    are never drawn."""
    gumbel = -torch.log(-torch.log(uniforms.clamp(1e-12, 1 - 1e-7)))
    return (logits.float() + gumbel).argmax(dim=1)
