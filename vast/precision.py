"""Which autocast a run uses on a device: one rule for training, evaluation and inference, so a
checkpoint scores clips alike wherever it runs."""

from __future__ import annotations

import functools
from contextlib import nullcontext

import torch


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX): elsewhere bf16
    is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(run_cfg, device: torch.device) -> torch.dtype | None:
    """The autocast dtype where the device supports it, None for fp32 (`run_cfg`: anything with fp16
    and bf16). CUDA: fp16, or bf16 when asked and supported. CPU: bf16 when asked and the CPU has it
    natively (fp16 is not offered), else fp32."""
    if device.type == "cuda" and (run_cfg.fp16 or run_cfg.bf16):
        return torch.bfloat16 if run_cfg.bf16 and torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and run_cfg.bf16 and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast_context(run_cfg, device: torch.device):
    dtype = autocast_dtype(run_cfg, device)
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
