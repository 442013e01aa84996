"""Loaders for the data entries of a config: per-rank batches of either dataset kind, and what failed.

`build_loader(entry, config, dist_info)` gives a `Loader`: iterate it for batches. It decides what
a clip that failed to decode means, in the main process (not in a loader worker, where an exception
would reach the user as a wrapped traceback):
- training: the clip is left out of its batch and counted; the log names the first few and the
  total per dataset; an epoch in which nothing at all could be used stops the run;
- evaluation: the first failure stops the run with one line naming the file and what is wrong;
- `failures="collect"` (check_data): every failure is kept and iteration goes on.
Nothing is ever substituted for a failed clip.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.utils.data import DataLoader, Sampler

from vast.config import Config, DataEntry
from vast.data.annotations import AnnotationDataset
from vast.data.batch import Batch, Failure
from vast.data.shard_reader import ShardDataset
from vast.distributed import DistInfo
from vast.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FIRST_FAILURES_LOGGED = 5


class ShardedSampler(Sampler[int]):
    """Each rank takes every world_size-th index. Training shuffles with a seed shared by all ranks
    (same permutation everywhere, so shards never overlap) and pads by wrapping so every rank runs the
    same number of steps; evaluation never pads, so every item is scored exactly once."""

    def __init__(self, size: int, rank: int, world_size: int, shuffle: bool, seed: int = 0):
        self.size, self.rank, self.world_size = size, rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.start = 0  # indices of this epoch already used (a resumed run); the next pass skips them

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        padded = math.ceil(self.size / self.world_size) * self.world_size
        return (order * math.ceil(padded / self.size))[:padded]

    def __iter__(self):
        start, self.start = self.start, 0
        return iter(self._order()[self.rank :: self.world_size][start:])

    def __len__(self) -> int:
        return len(self._order()[self.rank :: self.world_size])


def build_dataset(entry: DataEntry, config: Config, dist_info: DistInfo | None = None):
    seed = int(config.run_cfg.seed)
    if entry.type == "shards":
        rank, world = (dist_info.rank, dist_info.world_size) if dist_info else (0, 1)
        return ShardDataset(entry, config.model_cfg, seed=seed, rank=rank, world_size=world)
    if entry.type != "annoindexed":
        raise ConfigError(f"{entry.where}: unknown dataset type '{entry.type}'; use 'annoindexed' or 'shards'")
    return AnnotationDataset(entry, config.model_cfg, seed=seed)


def per_rank_batch_size(entry: DataEntry, world_size: int, accumulation: int = 1) -> int:
    """`batch_size` in a config is the global batch, as in VAST: each rank takes its share, and in
    training with gradient accumulation each micro-step a share of that."""
    if entry.batch_size % (world_size * accumulation):
        parts = f"{world_size} process(es)" + (f" x {accumulation} accumulation steps" if accumulation > 1 else "")
        raise ConfigError(f"{entry.where}.batch_size: {entry.batch_size} does not divide into {parts}; "
                          f"use a multiple of {world_size * accumulation}")
    return entry.batch_size // (world_size * accumulation)


class FailureLog:
    """Clips left out of training batches: a count and the first few, per dataset."""

    def __init__(self, dataset: str):
        self.dataset, self.count, self.first = dataset, 0, []

    def add(self, failures: list[Failure]) -> None:
        for failure in failures:
            self.count += 1
            if len(self.first) < FIRST_FAILURES_LOGGED:
                self.first.append(failure)
                logger.warning("%s: skipped a clip that cannot be used: %s", self.dataset, failure)

    def summary(self) -> str:
        return (f"{self.dataset}: {self.count} clip(s) skipped because they could not be used; first: "
                + "; ".join(str(f) for f in self.first))


class Loader:
    """The batches of one data entry on this rank (either dataset kind), with the failure policy of
    the module docstring and, for shard streams, the position to resume from."""

    def __init__(self, entry: DataEntry, dataset, dataloader: DataLoader, failures: str, seed: int = 0):
        self.entry, self.dataset, self.dataloader = entry, dataset, dataloader
        self.seed = seed
        self.failures = failures  # "skip" | "raise" | "collect"
        self.failure_log = FailureLog(entry.name)
        self.collected: list[Failure] = []
        self.items_read = 0  # clips handed over by the dataset, used or failed
        self.epoch = 0
        self.positions: dict[str, dict] = {}
        self.next_worker = 0
        self.consumed = 0  # annotation datasets: this rank's indices of the current epoch handed over
        self._pass = None  # the pass that next_batch is drawing from

    @property
    def num_samples(self) -> int | None:
        """Clips in the whole dataset (all ranks), when known."""
        if isinstance(self.dataset, ShardDataset):
            return self.dataset.num_samples
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch`: its shuffle order and its items' random draws."""
        self.epoch = epoch
        self.dataset.set_epoch(epoch)
        if isinstance(self.dataloader.sampler, ShardedSampler):
            self.dataloader.sampler.set_epoch(epoch)
        if self.dataloader.generator is not None:  # worker seeds: a function of the epoch, not of when a pass starts
            self.dataloader.generator.manual_seed(self.seed + 7919 * epoch)

    def next_batch(self) -> Batch:
        """The next training batch; when a pass ends, the next epoch starts (its own order and draws)."""
        while True:
            if self._pass is None:
                self.set_epoch(self.epoch)
                self._pass = iter(self)
            try:
                return next(self._pass)
            except StopIteration:
                self._pass = None
                self.epoch += 1

    def __iter__(self):
        usable = 0
        sampler = self.dataloader.sampler
        self.consumed = sampler.start if isinstance(sampler, ShardedSampler) else 0
        for batch in self.dataloader:
            self.items_read += len(batch) + len(batch.skipped)
            self.consumed += len(batch) + len(batch.skipped)
            self._handle_failures(batch)
            self._record_position(batch)
            if len(batch):
                usable += 1
                yield batch
        if isinstance(self.dataset, ShardDataset):
            self.dataset.resume = None  # a restored position applies to the first pass only
        if self.failures == "skip" and usable == 0 and self.failure_log.count:
            raise DataError(f"{self.entry.where}: no clip of a whole pass over the data could be used; "
                            + self.failure_log.summary())

    def _handle_failures(self, batch: Batch) -> None:
        if not batch.skipped:
            return
        if self.failures == "raise":
            raise DataError(f"{self.entry.where}: {batch.skipped[0]}")
        if self.failures == "collect":
            self.collected += batch.skipped
        else:
            self.failure_log.add(batch.skipped)

    def _record_position(self, batch: Batch) -> None:
        if batch.stream is not None:
            stream = batch.stream["stream"]
            self.positions[str(stream)] = batch.stream
            workers = self.dataset.workers
            self.next_worker = (stream % workers + 1) % workers

    def state_dict(self) -> dict:
        """Where the next batch comes from: the epoch, and within it the shard streams' positions (see
        vast.data.shard_reader) or, for annotation datasets, how many of this rank's indices were used."""
        return {"epoch": self.epoch, "streams": dict(self.positions), "next_worker": self.next_worker,
                "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        """Continue at `state`'s position: the next `next_batch()` is the one the saved run drew next."""
        self.set_epoch(int(state["epoch"]))
        self._pass = None
        self.positions = dict(state.get("streams", {}))
        self.next_worker = int(state.get("next_worker", 0))
        if isinstance(self.dataset, ShardDataset):
            self.dataset.resume = {"streams": self.positions, "next_worker": self.next_worker}
        elif isinstance(self.dataloader.sampler, ShardedSampler):
            self.dataloader.sampler.start = int(state.get("consumed", 0))


def build_loader(entry: DataEntry, config: Config, dist_info: DistInfo, dataset=None,
                 failures: str | None = None) -> Loader:
    """The loader of one data entry on this rank; `failures` defaults to skip (training) / raise."""
    dataset = dataset or build_dataset(entry, config, dist_info)
    seed = int(config.run_cfg.seed) + 1000 * dist_info.rank
    # training passes start at any step (and anew after a resume): their own generator keeps them from
    # drawing on torch's global one, which dropout and the objectives use
    generator = torch.Generator().manual_seed(seed) if entry.training else None
    accumulation = max(1, int(config.run_cfg.gradient_accumulation_steps)) if entry.training else 1
    common = dict(batch_size=per_rank_batch_size(entry, dist_info.world_size, accumulation), num_workers=entry.n_workers,
                  collate_fn=dataset.collate, drop_last=False, persistent_workers=False, generator=generator,
                  pin_memory=bool(config.run_cfg.pin_mem) and dist_info.device.type == "cuda")
    if isinstance(dataset, ShardDataset):
        dataloader = DataLoader(dataset, **common)
    else:
        sampler = ShardedSampler(len(dataset), dist_info.rank, dist_info.world_size,
                                 shuffle=entry.training, seed=int(config.run_cfg.seed))
        dataloader = DataLoader(dataset, sampler=sampler, **common)
    return Loader(entry, dataset, dataloader, failures or ("skip" if entry.training else "raise"), seed)
