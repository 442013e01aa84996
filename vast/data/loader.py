"""Data loaders for the datasets of a config: per-rank batches, sharded sampling, typed collation."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Sampler

from vast.config import Config, DataEntry
from vast.data.annotations import AnnotationDataset
from vast.distributed import DistInfo
from vast.errors import ConfigError


class ShardedSampler(Sampler[int]):
    """Each rank takes every world_size-th index. Training shuffles with a seed shared by all ranks
    (same permutation everywhere, so shards never overlap) and pads by wrapping so every rank runs the
    same number of steps; evaluation never pads, so every item is scored exactly once."""

    def __init__(self, size: int, rank: int, world_size: int, shuffle: bool, seed: int = 0):
        self.size, self.rank, self.world_size = size, rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

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
        return iter(self._order()[self.rank :: self.world_size])

    def __len__(self) -> int:
        return len(self._order()[self.rank :: self.world_size])


def build_dataset(entry: DataEntry, config: Config) -> AnnotationDataset:
    if entry.type != "annoindexed":
        raise ConfigError(f"{entry.where}: dataset type '{entry.type}' is not supported yet; use 'annoindexed'")
    return AnnotationDataset(entry, config.model_cfg, seed=int(config.run_cfg.seed))


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Start epoch `epoch` of a training loader: its shuffle order and its items' random draws."""
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)


def per_rank_batch_size(entry: DataEntry, world_size: int) -> int:
    """`batch_size` in a config is the global batch, as in VAST; each rank takes its share."""
    if entry.batch_size % world_size:
        raise ConfigError(f"{entry.where}.batch_size: {entry.batch_size} does not divide over {world_size} processes")
    return entry.batch_size // world_size


def build_dataloader(entry: DataEntry, config: Config, dist_info: DistInfo,
                     dataset: AnnotationDataset | None = None) -> DataLoader:
    dataset = dataset or build_dataset(entry, config)
    sampler = ShardedSampler(len(dataset), dist_info.rank, dist_info.world_size,
                             shuffle=entry.training, seed=int(config.run_cfg.seed))
    return DataLoader(
        dataset,
        batch_size=per_rank_batch_size(entry, dist_info.world_size),
        sampler=sampler,
        num_workers=entry.n_workers,
        collate_fn=dataset.collate,
        pin_memory=bool(config.run_cfg.pin_mem) and dist_info.device.type == "cuda",
        drop_last=False,
        persistent_workers=False,
    )
