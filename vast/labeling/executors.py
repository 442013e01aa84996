"""Executors: where the stages of one pipeline definition run, in-process or on Ray Data.

Both take the same stages and the same batches (a batch is `{"shard", "index", "records",
"seconds"}`: a fixed slice of one output shard's clips, see `Plan.batches`) and yield the batches
back with every stage applied and each stage's busy time added to `seconds`. Neither decides
anything about labels, so both give the same labels for the same plan.

- `InProcessExecutor` (default; one machine): the first stage (decoding) runs in `workers`
  DataLoader worker processes, ahead of the models, and the other stages run one after another in
  this process, each set up once. Batches come back in order.
- `RayExecutor` (`engine: ray`): each stage is a Ray Data `map_batches` actor pool whose actors
  request the stage's declared resources (CPUs, GPUs, memory), so a GPU stage lands on a GPU node
  and the pool grows with the cluster. Local Ray by default, the cluster at `ray_address` or
  `RAY_ADDRESS` otherwise; workers must have `vast` installed. Batches come back as they finish.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import time
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from vast.errors import ConfigError
from vast.labeling.stages import Stage

logger = logging.getLogger(__name__)


def run_stage(stage: Stage, batch: dict) -> dict:
    """Apply one stage to a batch and add the time it took to the batch's `seconds`."""
    started = time.perf_counter()
    batch["records"] = stage(batch["records"])
    batch["seconds"][stage.name] = batch["seconds"].get(stage.name, 0.0) + time.perf_counter() - started
    return batch


class _FirstStage(Dataset):
    """The batches as a map-style dataset whose items have the first stage applied (in a worker)."""

    def __init__(self, stage: Stage, batches: list[dict]):
        self.stage, self.batches, self.ready = stage, batches, False

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:
        if not self.ready:
            self.stage.setup()
            self.ready = True
        return run_stage(self.stage, self.batches[index])


def _as_is(item):
    return item


class InProcessExecutor:
    def __init__(self, workers: int = 2, threads: int = 2):
        self.workers, self.threads = workers, threads

    def run(self, stages: list[Stage], batches: list[dict]) -> Iterator[dict]:
        if not batches:
            return
        torch.set_num_threads(self.threads)
        first, rest = stages[0], stages[1:]
        loader = DataLoader(_FirstStage(first, batches), batch_size=None, shuffle=False, num_workers=self.workers,
                            collate_fn=_as_is, prefetch_factor=2 if self.workers else None)
        decoded = iter(loader)  # workers start (fork) before the models load, so they do not copy them
        for stage in rest:
            stage.setup()
        for batch in decoded:
            for stage in rest:
                run_stage(stage, batch)
            yield batch


class _RayStage:
    """One actor of a stage's pool: sets the stage up once, then maps batches (pickled, because
    records hold nested lists and arrays of clip-dependent shapes that Arrow would coerce)."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.stage.setup()

    def __call__(self, rows: dict) -> dict:
        payloads = [pickle.dumps(run_stage(self.stage, pickle.loads(p))) for p in rows["payload"]]
        return {"payload": payloads}


class RayExecutor:
    def __init__(self, address: str = "", threads: int = 2, num_cpus: int | None = None):
        self.address = address or os.environ.get("RAY_ADDRESS", "")
        self.threads, self.num_cpus = threads, num_cpus

    def _init(self):
        try:
            import ray
            import ray.data
        except ImportError:
            raise ConfigError("engine ray needs the ray package: pip install 'ray[data]' (preinstall.sh "
                              "installs it)") from None
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and timing lines, per run
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows one bar over clips
        return ray

    def run(self, stages: list[Stage], batches: list[dict]) -> Iterator[dict]:
        if not batches:
            return
        ray = self._init()
        cluster = ray.cluster_resources()
        cpus, gpus = cluster.get("CPU", 1.0), cluster.get("GPU", 0.0)
        # One actor of every stage must fit at once, or the pipeline stalls; on a small machine the
        # declared CPU counts are scaled down to fit (they are scheduling hints, not limits).
        wanted = sum(stage.resources.cpus for stage in stages)
        scale = min(1.0, 0.9 * cpus / wanted) if wanted else 1.0
        memory = cluster.get("memory", 0.0)
        wanted_memory = sum(stage.resources.memory_gb for stage in stages) * 2**30
        memory_scale = min(1.0, 0.8 * memory / wanted_memory) if wanted_memory else 1.0
        if scale < 1.0 or memory_scale < 1.0:
            logger.info("ray: %.1f CPUs, %.1f GB for %d stages wanting %.1f CPUs, %.1f GB: requests scaled by "
                        "%.2f, %.2f", cpus, memory / 2**30, len(stages), wanted, wanted_memory / 2**30, scale,
                        memory_scale)
        dataset = ray.data.from_items([{"payload": pickle.dumps(b)} for b in batches],
                                      override_num_blocks=len(batches))
        for stage in stages:
            need = stage.resources
            if need.gpus and not gpus:
                raise ConfigError(f"stage {stage.name} asks for a GPU and the Ray cluster has none")
            num_cpus = round(need.cpus * scale, 3)
            most = max(1, math.floor(cpus / max(num_cpus, 1e-3)))
            if need.gpus:
                most = min(most, max(1, math.floor(gpus / need.gpus)))
            placement = {"num_cpus": num_cpus, "memory": int(need.memory_gb * 2**30 * memory_scale),
                         **({"num_gpus": need.gpus} if need.gpus else {}),
                         # Ray would set OpenMP's threads to the CPU request; Whisper's decoding
                         # depends on that count, so every executor uses `threads`.
                         "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(self.threads)}}}
            dataset = dataset.map_batches(_RayStage, fn_constructor_args=(stage,), batch_size=1,
                                          concurrency=(1, min(most, len(batches))), **placement)
        for row in dataset.iter_rows():
            yield pickle.loads(row["payload"])


def make_executor(engine: str, workers: int, threads: int, address: str = ""):
    if engine == "ray":
        return RayExecutor(address, threads)
    return InProcessExecutor(workers, threads)


def pending_batches(plan, done: Iterable[int], batch_size: int) -> list[dict]:
    """Every batch of every shard that is not complete yet."""
    done = set(done)
    return [{"shard": shard, "index": index, "records": records, "seconds": {}}
            for shard in range(plan.num_shards) if shard not in done
            for index, records in enumerate(plan.batches(shard, batch_size))]
