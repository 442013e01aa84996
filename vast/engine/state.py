"""What a run must keep to continue where it stopped (`TrainState`), and the checkpointer that writes it.

A checkpoint of step N is two files in `output_dir/ckpt/`:
- `model_step_<N>.pt`: the model's weights alone, the layout that `--pretrain_dir`, `--checkpoint`,
  `--mode testing` and `vast.load_model` read;
- `training_state_<N>.pt`: everything else, written last: the step, optimizer, scheduler, grad
  scaler, best metrics so far, and per rank the RNG states and each corpus's data position.
- under DeepSpeed, `deepspeed/step_<N>/`: DeepSpeed's own checkpoint (model, the optimizer's
  partitions, scheduler), written by every rank before the state file, which then names it.

Each file is written to a temporary name and renamed, and the state file comes second, so a
checkpoint is complete exactly when its state file exists. Older checkpoints are removed only after
the new one is complete (`remove_before_ckpt`): a run killed at any moment leaves one it can resume.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from vast.distributed import DistInfo, all_gather_objects, barrier
from vast.engine.deepspeed_backend import plain_weights
from vast.errors import DataError
from vast.models.checkpoints import atomic_save

logger = logging.getLogger("vast")


def rng_state() -> dict:
    """This process's random generators: Python, NumPy, torch CPU and, when present, every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainState:
    """Everything that must survive a crash, with `state_dict()` / `load_state_dict()`.

    `state_dict()["rank"]` is this rank's own part (RNGs, data positions); the rest is the same on
    every rank."""

    def __init__(self, model, optimizer, scheduler, scaler, loaders, total_steps: int, engine=None):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.engine = engine  # a DeepSpeed engine keeps the optimizer, scheduler and scaling itself
        self.loaders = loaders
        self.total_steps = total_steps
        self.step = 0
        self.best: dict[str, float] = {}  # "<dataset>_<group>_<metric>" -> best value so far
        self.nonfinite = 0  # steps in a row whose loss was not finite

    def state_dict(self) -> dict:
        state = {"step": self.step, "total_steps": self.total_steps, "model": self.model.state_dict(),
                 "best": dict(self.best), "nonfinite": self.nonfinite,
                 "rank": {"rng": rng_state(), "loaders": [loader.state_dict() for loader in self.loaders]}}
        if self.engine is None:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore everything but, under DeepSpeed, what its own checkpoint holds (loaded before)."""
        self.step, self.best, self.nonfinite = int(state["step"]), dict(state["best"]), int(state["nonfinite"])
        if self.engine is None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        for loader, loader_state in zip(self.loaders, state["rank"]["loaders"]):
            loader.load_state_dict(loader_state)
        set_rng_state(state["rank"]["rng"])


class Checkpointer:
    """Writes and finds the checkpoints of one run folder (layout in the module docstring)."""

    def __init__(self, output_dir: Path, dist_info: DistInfo, keep_only_latest: bool = True):
        self.dir = Path(output_dir) / "ckpt"
        self.dist = dist_info
        self.keep_only_latest = keep_only_latest

    def model_path(self, step: int) -> Path:
        return self.dir / f"model_step_{step}.pt"

    def state_path(self, step: int) -> Path:
        return self.dir / f"training_state_{step}.pt"

    def save(self, state: TrainState) -> None:
        """Collective: every rank hands over its own part (and writes its DeepSpeed shards); rank 0
        writes the files, then prunes."""
        full = state.state_dict()
        ranks = all_gather_objects(full.pop("rank"))
        if state.engine is not None:
            full["deepspeed"] = f"step_{state.step}"
            state.engine.save_checkpoint(str(self.dir / "deepspeed"), tag=full["deepspeed"], save_latest=False)
            barrier()  # every rank's shards are on disk before the state file names them
            full["model"] = plain_weights(state.engine, full["model"])
        if self.dist.is_main:
            atomic_save(full.pop("model"), self.model_path(state.step))
            atomic_save({**full, "ranks": ranks}, self.state_path(state.step))
            if self.keep_only_latest:
                self._remove_all_but(state.step)
        barrier()

    def _remove_all_but(self, step: int) -> None:
        keep = {self.model_path(step).name, self.state_path(step).name, f"step_{step}"}
        for pattern in ("model_step_*.pt", "training_state_*.pt", ".model_step_*.tmp", ".training_state_*.tmp",
                        "deepspeed/step_*"):
            for old in self.dir.glob(pattern):
                if old.name not in keep:
                    shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)

    def find(self, resume) -> Path | None:
        """The state file that `resume` names: None for false; true: the newest complete checkpoint
        of this run; a path: a training_state file, or a run (or its ckpt) folder's newest."""
        if resume is False or resume is None:
            return None
        if resume is True:
            folder, what = self.dir, f"no complete checkpoint in {self.dir} to resume from"
        else:
            path = Path(resume)
            if path.is_file():
                if not re.fullmatch(r"training_state_\d+\.pt", path.name):
                    raise DataError(f"resume: {path} is not a training_state_<step>.pt file; give that file, "
                                    "or the run folder to take its newest checkpoint")
                return path
            folder = path / "ckpt" if (path / "ckpt").is_dir() else path
            what = f"resume: no complete checkpoint (model_step_<N>.pt + training_state_<N>.pt) in {folder}"
        steps = Checkpointer.complete_steps(folder)
        if not steps:
            raise DataError(what + "; start without --resume")
        return folder / f"training_state_{steps[-1]}.pt"

    def load(self, state: TrainState, state_path: Path) -> None:
        """Restore `state` from a checkpoint written by a run with the same number of processes."""
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        ranks = saved.pop("ranks")
        if len(ranks) != self.dist.world_size:
            raise DataError(f"{state_path}: written by a run of {len(ranks)} process(es); this run has "
                            f"{self.dist.world_size}: resume with the same number of processes")
        if int(saved["total_steps"]) != state.total_steps:
            raise DataError(f"{state_path}: its run trains {saved['total_steps']} steps, this config "
                            f"{state.total_steps}: resume with the config of the interrupted run")
        if state.engine is not None:
            if "deepspeed" not in saved:
                raise DataError(f"{state_path}: written without DeepSpeed; resume it without run_cfg.deepspeed")
            loaded, _ = state.engine.load_checkpoint(str(state_path.parent / "deepspeed"), tag=saved["deepspeed"])
            if loaded is None:
                raise DataError(f"{state_path.parent / 'deepspeed' / saved['deepspeed']}: DeepSpeed could not load it")
        elif "deepspeed" in saved:
            raise DataError(f"{state_path}: written by a DeepSpeed run; resume it with the same run_cfg.deepspeed")
        else:
            model_path = state_path.with_name(f"model_step_{int(saved['step'])}.pt")
            saved["model"] = torch.load(model_path, map_location="cpu", weights_only=True)
        saved["rank"] = ranks[self.dist.rank]
        state.load_state_dict(saved)

    def save_best(self, model_state: dict, key: str) -> None:
        if self.dist.is_main:
            atomic_save(model_state, self.dir / f"best_{key}.pt")

    @staticmethod
    def complete_steps(folder: Path) -> list[int]:
        """Steps that have a complete checkpoint (both files) in `folder`, oldest first."""
        found = []
        for path in Path(folder).glob("training_state_*.pt"):
            match = re.fullmatch(r"training_state_(\d+)\.pt", path.name)
            if match and (path.parent / f"model_step_{match.group(1)}.pt").is_file():
                found.append(int(match.group(1)))
        return sorted(found)
