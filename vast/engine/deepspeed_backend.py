"""The DeepSpeed backend: ZeRO stages 1 and 2 set up from the same run_cfg keys as DDP.

`run_cfg.deepspeed` is `false` (DDP), `true` (ZeRO stage 2), a stage number, or a DeepSpeed JSON
file whose `zero_optimization` block (bucket sizes, overlap, CPU offload ...) is used as it is. What
a config already says is not repeated there: the batch size and accumulation come from the data
entries and `gradient_accumulation_steps`, clipping from `grad_norm`, the optimizer and schedule
from `optim`, `learning_rate`, `clip_lr`, `scheduler` and `warmup_ratio`, precision from
`fp16` / `bf16`; a JSON that sets one of those stops the run and says where to set it instead.

Precision: bf16 runs under the same torch autocast as DDP (fp32 weights and optimizer); fp16 on
CUDA is DeepSpeed's own fp16 mode (fp16 weights, fp32 master copy, dynamic loss scaling). Stage 3
partitions the parameters themselves, which the towers' gathered features and the plain
`model_step_<N>.pt` files would have to gather for every use; it is refused with that reason.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from vast.config import resolve_path
from vast.errors import ConfigError

logger = logging.getLogger("vast")

DEFAULT_STAGE = 2
# DeepSpeed keys that run_cfg (or the data entries) already set -> where
OWNED_KEYS = {
    "train_batch_size": "the data entries' batch_size", "train_micro_batch_size_per_gpu": "the data entries' batch_size",
    "gradient_accumulation_steps": "run_cfg.gradient_accumulation_steps", "gradient_clipping": "run_cfg.grad_norm",
    "optimizer": "run_cfg.optim / learning_rate / clip_lr", "scheduler": "run_cfg.scheduler / warmup_ratio",
    "fp16": "run_cfg.fp16", "bf16": "run_cfg.bf16",
}


def zero_settings(setting) -> dict | None:
    """The `zero_optimization` block that `run_cfg.deepspeed` asks for; None for DDP."""
    if setting is False or setting is None or str(setting) == "0":
        return None
    if setting is True:
        return {"stage": DEFAULT_STAGE}
    text = str(setting)
    if text.isdigit():
        zero = {"stage": int(text)}
    else:
        path = resolve_path(text)
        try:
            user = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"run_cfg.deepspeed: {path} not found; give a DeepSpeed JSON file or a ZeRO stage (1, 2)") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"run_cfg.deepspeed: {path} is not valid JSON: {error}") from None
        for key in user:
            if key in OWNED_KEYS:
                raise ConfigError(f"run_cfg.deepspeed: {path} sets '{key}'; set it with {OWNED_KEYS[key]} "
                                  "so the config means the same under DDP and DeepSpeed")
        zero = dict(user.get("zero_optimization", {"stage": DEFAULT_STAGE}))
        zero.setdefault("stage", DEFAULT_STAGE)
    if zero["stage"] not in (1, 2):
        raise ConfigError(f"run_cfg.deepspeed: ZeRO stage {zero['stage']} is not supported; use 1 or 2 (stage 3 "
                          "partitions the parameters, which the gathered features and the plain model checkpoints "
                          "would have to collect at every use)")
    return zero


def deepspeed_config(zero: dict, run_cfg, micro_batch: int, world_size: int, device: torch.device) -> dict:
    accumulation = max(1, int(run_cfg.gradient_accumulation_steps))
    fp16 = device.type == "cuda" and bool(run_cfg.fp16) and not run_cfg.bf16
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch * accumulation * world_size,
        "gradient_clipping": float(run_cfg.grad_norm) if run_cfg.grad_norm > 0 else 0.0,
        "zero_optimization": zero,
        "fp16": {"enabled": fp16, "loss_scale": 0},
        "bf16": {"enabled": False},  # bf16 runs under torch autocast with fp32 weights, as under DDP
        "zero_allow_untested_optimizer": True,  # our AdamW with its parameter groups
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def initialize(task: torch.nn.Module, optimizer, scheduler, config: dict):
    """The DeepSpeed engine around the task (it runs forward, backward, clipping and the optimizer
    and scheduler steps at the accumulation boundary)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError:
        raise ConfigError("run_cfg.deepspeed is set but DeepSpeed is not installed: pip install deepspeed "
                          "(or bash preinstall.sh)") from None
    logger.info("DeepSpeed %s: ZeRO stage %d, micro-batch %d per process, %d accumulation step(s)",
                deepspeed.__version__, config["zero_optimization"]["stage"],
                config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"])
    # DeepSpeed views each parameter as bytes to broadcast it, which a 0-dim tensor (the contrastive
    # temperature) cannot be: such parameters train as 1-dim tensors, and `plain_weights` gives
    # them back their shape for the model_step files
    scalars = [name for name, p in task.model.named_parameters() if p.dim() == 0]
    for name in scalars:
        parameter = task.model.get_parameter(name)
        parameter.data = parameter.data.reshape(1)
    engine, _, _, _ = deepspeed.initialize(model=task, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=config, dist_init_required=False)
    engine.vast_scalar_parameters = scalars
    return engine


def plain_weights(engine, model_state: dict) -> dict:
    """The model's weights as DDP training writes them: fp32, the scalar parameters 0-dim again."""
    scalars = set(getattr(engine, "vast_scalar_parameters", ()))
    plain = {}
    for key, value in model_state.items():
        value = value.float() if value.is_floating_point() else value
        plain[key] = value.reshape(()) if key in scalars else value
    return plain
