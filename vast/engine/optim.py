"""Optimizer parameter groups (vision tower at clip_lr, no decay on norms and biases) and LR schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from vast.config import Section


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer's and the schedule's settings, from run_cfg (their defaults are the schema's)."""

    optim: str
    learning_rate: float
    clip_lr: float
    new_lr: float
    new_params_name: tuple[str, ...]
    weight_decay: float
    betas: tuple[float, float]
    adam_epsilon: float
    scheduler: str
    warmup_ratio: float

    @classmethod
    def from_run_cfg(cls, run_cfg: Section) -> "OptimConfig":
        values = {f.name: run_cfg[f.name] for f in fields(cls)}
        values["new_params_name"] = tuple(n for n in run_cfg.new_params_name if n)
        values["betas"] = tuple(float(b) for b in run_cfg.betas)
        return cls(**values)


def _no_decay(name: str, parameter: nn.Parameter) -> bool:
    return parameter.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") or "embedding" in name


def parameter_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """Groups by (learning rate, weight decay): the vision tower trains at `clip_lr` as in VAST,
    parameters whose name contains one of `new_params_name` at `new_lr` (when set), the rest at
    `learning_rate`; norms, biases and embedding tables get no weight decay."""
    groups: dict[tuple[float, float], list] = {}
    new_names = config.new_params_name
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lr = config.learning_rate
        if name.startswith("vision_encoder."):
            lr = config.clip_lr
        if new_names and config.new_lr and any(n in name for n in new_names):
            lr = config.new_lr
        decay = 0.0 if _no_decay(name, parameter) else config.weight_decay
        groups.setdefault((lr, decay), []).append(parameter)
    return [{"params": params, "lr": lr, "initial_lr": lr, "weight_decay": decay}
            for (lr, decay), params in groups.items()]


def create_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    kind = torch.optim.Adam if config.optim == "adam" else torch.optim.AdamW
    return kind(parameter_groups(model, config), betas=config.betas, eps=config.adam_epsilon)


def lr_multiplier(step: int, total_steps: int, warmup_ratio: float, kind: str) -> float:
    """`warmup_linear`: linear warm-up then linear decay to 0; `warmup_cosine`: warm-up then cosine
    decay to 0; `constant`: warm-up then flat."""
    warmup = int(total_steps * warmup_ratio)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if kind == "warmup_linear":
        return max(0.0, 1.0 - progress)
    if kind == "warmup_cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def create_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, config: OptimConfig):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, total_steps, config.warmup_ratio, config.scheduler))
