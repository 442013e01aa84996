"""What every labeling stage is: a small class that loads its model once and maps batches of clips.

A stage declares the resources one copy of it needs (`Resources`), so an executor (in-process, or
Ray Data's actor pools) can decide where and how many copies run; the stage itself never decides.
A batch is a list of clip records (dicts keyed by clip id and the fields earlier stages added); a
stage returns the same records with its own fields added.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """What one copy of a stage needs: CPU cores, GPUs (fractions allowed) and memory in GB."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 1.0


class Stage:
    """Base of the labeling stages: `setup()` once per copy, then `__call__(batch)` per batch."""

    name = "stage"
    resources = Resources()

    def setup(self) -> None:
        """Load models; called once per copy of the stage, before its first batch."""

    def __call__(self, batch: list[dict]) -> list[dict]:
        raise NotImplementedError
