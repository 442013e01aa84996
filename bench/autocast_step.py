"""Time of one training step (forward + backward) in float32 against bf16 autocast, same process.

Builds the model and the first training batch of a config (the demo corpus by default), then times
`--repeats` steps of each precision on that batch, alternating so that load changes on a shared
machine hit both alike, and prints the best time of each and their ratio. The gradients are
computed but not applied, so every step sees the same weights.

    python bench/autocast_step.py                                   # retrieval-demo: ITC + ITM
    python bench/autocast_step.py --config config/vast/demo/caption-demo.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from contextlib import nullcontext

import torch

from vast.config import load_config
from vast import distributed
from vast.engine.trainer import Trainer
from vast.precision import cpu_has_native_bf16


def step_time(task, batch, context) -> float:
    started = time.perf_counter()
    with context():
        losses = task(batch)
    losses["loss"].backward()
    task.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/vast/demo/retrieval-demo.json")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    config = load_config(args.config, {"output_dir": ["output/bench-autocast"]})
    trainer = Trainer(config, distributed.init_distributed())
    loaders, _ = trainer._train_loaders()
    batch = loaders[0].next_batch().to(trainer.dist.device)
    task = trainer.task.train()
    contexts = {"float32": nullcontext, "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}
    for context in contexts.values():  # warm-up: first calls allocate and pick kernels
        step_time(task, batch, context)
    times = {name: [] for name in contexts}
    for _ in range(args.repeats):
        for name, context in contexts.items():
            times[name].append(step_time(task, batch, context))

    best = {name: min(values) for name, values in times.items()}
    print(f"command: python bench/autocast_step.py --config {args.config} --repeats {args.repeats}")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"native bf16: {cpu_has_native_bf16()}")
    print(f"task {batch.task.text}, batch {len(batch.ids)}, best of {args.repeats} steps (forward + backward)")
    print(f"float32: {best['float32']:.2f} s   bf16: {best['bf16']:.2f} s   speed-up: "
          f"{best['float32'] / best['bf16']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
