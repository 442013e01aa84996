"""What a user watching a long run sees: a progress bar on rank 0 (when attached to a terminal),
`log/train.jsonl` every `log_steps` steps, and TensorBoard scalars with `--tensorboard true`.

A train.jsonl record covers the steps since the previous one:
`{"step", "loss", "losses": {name: value}, "lr", "samples_per_s", "data_wait", "peak_memory_mb",
"memory_kind", "seconds"}`: the losses of the record's last step, global samples per second, the
share of the time spent waiting for batches, and the peak memory so far (CUDA allocations, or the
process's resident set on the CPU).
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger("vast")


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss"  # Linux reports KiB


class TrainingMonitor:
    """Collects each step's timing and losses; rank 0 writes and shows them (see module docstring)."""

    def __init__(self, output_dir: Path, total_steps: int, first_step: int, log_steps: int, is_main: bool,
                 device: torch.device, tensorboard: bool = False):
        self.total, self.log_steps, self.is_main, self.device = total_steps, max(1, log_steps), is_main, device
        self.path = Path(output_dir) / "log" / "train.jsonl"
        self.started = time.perf_counter()
        self._window = {"samples": 0, "seconds": 0.0, "data": 0.0}
        self.bar = self.writer = None
        if not is_main:
            return
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=first_step, unit="step", dynamic_ncols=True)
        if tensorboard:
            self.writer = _tensorboard_writer(Path(output_dir) / "log" / "tensorboard")

    def step(self, step: int, losses: dict[str, torch.Tensor] | None, lr: float, samples: int,
             seconds: float, data_seconds: float) -> None:
        """Account for optimizer step `step` (1-based): `samples` clips over all ranks in `seconds`,
        `data_seconds` of which waiting for batches; `losses` None for a skipped step."""
        window = self._window
        window["samples"] += samples
        window["seconds"] += seconds
        window["data"] += data_seconds
        values = {name: float(value) for name, value in (losses or {}).items()}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}",
                                 samples_s=f"{samples / max(seconds, 1e-9):.1f}", refresh=False)
        if step % self.log_steps and step not in (1, self.total):
            return
        memory, kind = peak_memory_mb(self.device)
        record = {"step": step, "loss": values.pop("loss", None), "losses": values, "lr": lr,
                  "samples_per_s": round(window["samples"] / max(window["seconds"], 1e-9), 3),
                  "data_wait": round(window["data"] / max(window["seconds"], 1e-9), 4),
                  "peak_memory_mb": round(memory, 1), "memory_kind": kind,
                  "seconds": round(time.perf_counter() - self.started, 2)}
        self._window = {"samples": 0, "seconds": 0.0, "data": 0.0}
        if not self.is_main:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in {"loss": record["loss"], **{f"losses/{k}": v for k, v in values.items()},
                                "lr": lr, "samples_per_s": record["samples_per_s"],
                                "data_wait": record["data_wait"], "peak_memory_mb": record["peak_memory_mb"]}.items():
                if value is not None:
                    self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("--tensorboard true, but the tensorboard package is not installed (pip install "
                       "tensorboard): no TensorBoard scalars; log/train.jsonl has the same figures")
        return None
    logger.info("TensorBoard scalars in %s (tensorboard --logdir %s)", folder, folder)
    return SummaryWriter(str(folder))
