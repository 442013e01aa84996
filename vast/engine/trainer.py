"""The training loop: mixed-dataset steps, AMP, accumulation, clipping, evaluation schedule, checkpoints."""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from vast.config import Config
from vast.data.loader import build_loader
from vast.distributed import DistInfo, barrier
from vast.engine import deepspeed_backend
from vast.engine.monitor import TrainingMonitor
from vast.engine.optim import OptimConfig, create_optimizer, create_scheduler
from vast.engine.state import Checkpointer, TrainState, rng_state, set_rng_state
from vast.errors import VastError
from vast.evaluation.captioning import evaluate_captioning
from vast.evaluation.qa import evaluate_qa
from vast.evaluation.qa import submission as qa_submission
from vast.evaluation.retrieval import evaluate_retrieval
from vast.models.build import build_model
from vast.objectives import LossConfig, VastTask
from vast.precision import autocast_context, autocast_dtype
from vast.tasks import TaskType

logger = logging.getLogger("vast")

MAX_NONFINITE_STEPS = 5
EVALUATORS = {TaskType.RETRIEVAL: evaluate_retrieval, TaskType.CAPTION: evaluate_captioning, TaskType.QA: evaluate_qa}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, config: Config, dist_info: DistInfo):
        self.config = config
        self.run_cfg = config.run_cfg
        self.dist = dist_info
        self.output_dir = Path(self.run_cfg.output_dir)
        seed = int(self.run_cfg.seed)
        seed_everything(seed)  # the same initial weights on every rank (evaluation gathers their outputs)
        self.model = build_model(config).to(dist_info.device)
        seed_everything(seed + dist_info.rank)  # each rank its own dropout and draws, as the original
        self.task = VastTask(self.model, LossConfig.from_model_cfg(config.model_cfg), seed)
        self.val_loaders = [build_loader(e, config, dist_info) for e in config.val]
        self.checkpointer = Checkpointer(self.output_dir, dist_info, bool(self.run_cfg.remove_before_ckpt))
        precision = str(autocast_dtype(self.run_cfg, dist_info.device) or torch.float32).removeprefix("torch.")
        if self.run_cfg.bf16 and precision != "bfloat16":
            logger.info("bf16 asked for, but this %s has no native bf16: running %s", dist_info.device.type, precision)
        else:
            logger.info("precision: %s", precision)

    # --- evaluation --------------------------------------------------------------------------

    def evaluate(self, step: int) -> list[dict]:
        """Evaluate every val entry; training's random generators are left as they were."""
        saved = rng_state()
        try:
            return self._evaluate(step)
        finally:
            set_rng_state(saved)

    def _evaluate(self, step: int) -> list[dict]:
        self.model.eval()
        records = []
        for entry, loader in zip(self.config.val, self.val_loaders):
            started = time.perf_counter()
            for task_type in entry.task.types:
                predictions: dict = {}
                evaluate = EVALUATORS[task_type]
                if task_type is TaskType.CAPTION:  # captioner mode writes its captions there as it goes
                    evaluate = functools.partial(evaluate, log_dir=self.output_dir / "log", step=step)
                with autocast_context(self.run_cfg, self.dist.device):
                    results = evaluate(self.model, loader, entry, self.config.model_cfg, predictions)
                self._write_predictions(entry.name, task_type, step, predictions)
                if task_type is TaskType.QA and entry.make_submission:
                    self._write_submission(entry.name, step, predictions)
                for group, metrics in results.items():
                    records.append({"step": step, "dataset": entry.name, "task": entry.task.text,
                                    "type": task_type.value, "group": group, "metrics": metrics})
            logger.info("evaluated %s at step %d in %.1fs", entry.name, step, time.perf_counter() - started)
        if self.dist.is_main:
            with open(self.output_dir / "log" / "metrics.jsonl", "a", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record) + "\n")
                    logger.info("step %d %s %s %s", step, record["dataset"], record["group"], json.dumps(record["metrics"]))
        return records

    def _write_predictions(self, dataset: str, task_type: TaskType, step: int, predictions: dict) -> None:
        """Generated captions / answers as JSON beside metrics.jsonl, one file per dataset, type and step
        (captioner mode leaves `predictions` empty: it writes its own files, see evaluate_captioning)."""
        if not predictions or not self.dist.is_main:
            return
        path = self.output_dir / "log" / f"predictions_{dataset}_{task_type.value}_step{step}.json"
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(predictions, handle, indent=1, ensure_ascii=False)
        logger.info("predictions written to %s", path)

    def _write_submission(self, dataset: str, step: int, predictions: dict) -> None:
        """`make_submission`: the answers of each group in the VQAv2 evaluation server's format."""
        if not self.dist.is_main:
            return
        for group, records in predictions.items():
            path = self.output_dir / "log" / f"submission_{dataset}_{group}_step{step}.json"
            path.write_text(json.dumps(qa_submission(records)) + "\n", encoding="utf-8")
            logger.info("submission written to %s (%d answers)", path, len(records))

    # --- checkpoints -------------------------------------------------------------------------

    def _track_best(self, state: TrainState, records: list[dict]) -> None:
        """With `save_best`: a record that beats the best so far writes ckpt/best_<dataset>_<group>_<metric>.pt."""
        if not self.run_cfg.save_best:
            return
        for record in records:
            name, value = best_metric(record)
            key = f"{record['dataset']}_{record['group']}_{name}"
            if value is not None and value > state.best.get(key, -math.inf):
                state.best[key] = value
                self.checkpointer.save_best(self.model.state_dict(), key)
                logger.info("new best %s = %.2f at step %d", key, value, state.step)

    # --- training ----------------------------------------------------------------------------

    def _train_loaders(self):
        loaders, steps = [], []
        for entry in self.config.train:
            loader = build_loader(entry, self.config, self.dist)
            if not entry.steps and loader.num_samples is None:
                raise VastError(f"{entry.where}: 'epoch' needs the corpus size; give 'steps', or name the "
                                "writer's shards.json in 'shards' (it records the sample counts)")
            loaders.append(loader)
            steps.append(entry.steps or max(1, math.ceil(entry.epoch * loader.num_samples / entry.batch_size)))
        return loaders, steps

    def _wrap(self, module):
        if self.dist.distributed and self.run_cfg.use_ddp:
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)
        return module

    def _training_state(self, loaders, total: int) -> tuple[TrainState, torch.nn.Module]:
        """The state to train (and checkpoint) and the module a step calls: the task itself, under
        DDP, or under a DeepSpeed engine."""
        optim_config = OptimConfig.from_run_cfg(self.run_cfg)
        optimizer = create_optimizer(self.model, optim_config)
        scheduler = create_scheduler(optimizer, total, optim_config)
        scaler = torch.amp.GradScaler(self.dist.device.type, enabled=self.dist.device.type == "cuda"
                                      and self.run_cfg.fp16 and not self.run_cfg.bf16)
        zero = deepspeed_backend.zero_settings(self.run_cfg.deepspeed)
        if zero is None:
            return TrainState(self.model, optimizer, scheduler, scaler, loaders, total), self._wrap(self.task)
        micro = loaders[0].dataloader.batch_size
        config = deepspeed_backend.deepspeed_config(zero, self.run_cfg, micro, self.dist.world_size, self.dist.device)
        engine = deepspeed_backend.initialize(self.task, optimizer, scheduler, config)
        return TrainState(self.model, optimizer, scheduler, scaler, loaders, total, engine=engine), engine

    def train(self) -> list[dict]:
        loaders, steps_per_dataset = self._train_loaders()
        total = int(self.run_cfg.num_train_steps) or sum(steps_per_dataset)
        schedule = dataset_schedule(steps_per_dataset, total, int(self.run_cfg.seed), self.run_cfg.dataset_mix_type)
        state, task = self._training_state(loaders, total)
        eval_every = max(1, total // max(1, int(self.run_cfg.valid_freq)))
        ckpt_every = int(self.run_cfg.ckpt_steps) or eval_every
        records: list[dict] = []
        if self._resume(state):
            logger.info("resumed at step %d/%d", state.step, total)
        elif self.run_cfg.first_eval and self.val_loaders:
            records = self.evaluate(0)
        logger.info("training %d steps over %d dataset(s); evaluation every %d steps, checkpoint every %d",
                    total, len(loaders), eval_every, ckpt_every)
        monitor = TrainingMonitor(self.output_dir, total, state.step, int(self.run_cfg.log_steps),
                                  self.dist.is_main, self.dist.device, bool(self.run_cfg.tensorboard))
        started = time.perf_counter()
        while state.step < total:
            task.train()
            step_started = time.perf_counter()
            losses, samples, data_seconds = self._step(state, task, loaders[schedule[state.step]])
            lr = state.scheduler.get_last_lr()[0]
            monitor.step(state.step, losses, lr, samples * self.dist.world_size,
                         time.perf_counter() - step_started, data_seconds)
            if losses is not None and (state.step % max(1, int(self.run_cfg.log_steps)) == 0 or state.step == 1):
                parts = " ".join(f"{k} {v.item():.4f}" for k, v in sorted(losses.items()))
                logger.info("step %d/%d %s lr %.2e temp %.4f (%.1fs)", state.step, total, parts, lr,
                            self.model.contra_temp.item(), time.perf_counter() - started)
            evaluate = state.step % eval_every == 0 or state.step == total
            if evaluate:
                records = self.evaluate(state.step) if self.val_loaders else []
                self._track_best(state, records)
            if evaluate or state.step % ckpt_every == 0:
                self.checkpointer.save(state)
        monitor.close()
        for loader in loaders:
            if loader.failure_log.count:
                logger.warning("%s", loader.failure_log.summary())
        barrier()
        return records

    def _step(self, state: TrainState, task, loader) -> tuple[dict[str, torch.Tensor] | None, int, float]:
        """One optimizer step over one global batch: `gradient_accumulation_steps` micro-batches,
        gradients synchronised on the last. Returns the losses (their mean over the micro-batches;
        None when a non-finite loss skipped the step), this rank's clips, and the seconds spent
        waiting for batches."""
        accumulation = max(1, int(self.run_cfg.gradient_accumulation_steps))
        fetch_started = time.perf_counter()
        batches = [loader.next_batch().to(self.dist.device) for _ in range(accumulation)]
        data_seconds = time.perf_counter() - fetch_started
        samples = sum(len(batch) for batch in batches)
        cache = None
        if accumulation > 1 and self.run_cfg.contrastive_negatives == "global":
            with autocast_context(self.run_cfg, self.dist.device):
                cache = self.task.contrastive_cache(batches)
        logged: dict[str, torch.Tensor] = {}
        for micro, batch in enumerate(batches):
            sync = micro == accumulation - 1 or not isinstance(task, DistributedDataParallel)
            with (nullcontext() if sync else task.no_sync()), autocast_context(self.run_cfg, self.dist.device):
                losses = task(batch, step=state.step, micro=micro, micro_steps=accumulation, cache=cache)
            loss = losses.pop("loss")
            if not torch.isfinite(loss):
                if state.engine is not None:
                    raise VastError(f"step {state.step}: the loss is not finite ({loss.item()}); under DeepSpeed "
                                    "the run stops: lower learning_rate, or use bf16 instead of fp16")
                break
            if state.engine is not None:
                state.engine.backward(loss, scale_wrt_gas=False)  # the task already divides by micro-steps
                state.engine.step()  # the optimizer steps at the accumulation boundary
            else:
                state.scaler.scale(loss).backward()
            for name, value in losses.items():
                logged[name] = logged.get(name, 0.0) + value.detach() / accumulation
        state.step += 1
        if not torch.isfinite(loss):
            self._skip_nonfinite(state, loss)
            return None, samples, data_seconds
        state.nonfinite = 0
        if state.engine is None:
            self._optimizer_step(state)
        logged["loss"] = sum(logged.values())
        return logged, samples, data_seconds

    def _optimizer_step(self, state: TrainState) -> None:
        scaler, optimizer = state.scaler, state.optimizer
        if self.run_cfg.grad_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.run_cfg.grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.scheduler.step()

    def _resume(self, state: TrainState) -> bool:
        """Restore `state` from the checkpoint `resume` names; the logs drop what came after it."""
        path = self.checkpointer.find(self.run_cfg.resume)
        if path is None:
            return False
        self.checkpointer.load(state, path)
        logger.info("resuming from %s", path)
        if self.dist.is_main:
            for name in ("metrics.jsonl", "train.jsonl"):
                truncate_records(self.output_dir / "log" / name, state.step)
        return True

    def _skip_nonfinite(self, state: TrainState, loss: torch.Tensor) -> None:
        state.nonfinite += 1
        state.optimizer.zero_grad(set_to_none=True)
        logger.warning("step %d: non-finite loss (%s); step skipped", state.step - 1, loss.item())
        if state.nonfinite >= MAX_NONFINITE_STEPS:
            raise VastError(f"the loss was not finite for {state.nonfinite} steps in a row; lower "
                            "learning_rate, or use bf16 instead of fp16")


def dataset_schedule(steps_per_dataset: list[int], total: int, seed: int, mix: str = "random") -> list[int]:
    """Which corpus each step draws from, the same on every rank (which must run the same groups each
    step): each corpus's step budget, shuffled with the run's seed (`random`) or taken in turn in
    config order, a corpus dropping out when its budget is spent (`round_robin`); repeated to `total`."""
    if mix == "round_robin":
        left, order = list(steps_per_dataset), []
        while any(left):
            for i, n in enumerate(left):
                if n:
                    order.append(i)
                    left[i] -= 1
    else:
        order = [i for i, n in enumerate(steps_per_dataset) for _ in range(n)]
        random.Random(seed).shuffle(order)
    return (order * math.ceil(total / len(order)))[:total]


def truncate_records(path: Path, step: int) -> None:
    """Keep the JSON lines of `path` up to `step`: a resumed run writes the later ones again."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        path.write_text("".join(kept), encoding="utf-8")


def best_metric(record: dict) -> tuple[str, float | None]:
    """The figure `save_best` tracks for an evaluation record."""
    metrics = record["metrics"]
    for name in ("t2v_itm", "t2v_itc"):
        if name in metrics:
            return f"{name}_r1", metrics[name]["r1"]
    for name in ("cider", "accuracy"):
        if name in metrics:
            return name, metrics[name]
    return "none", None


def run_training(config: Config, dist_info: DistInfo):
    if config.run_cfg.mode == "training" and not config.run_cfg.zero_shot:  # settings that cannot work stop here
        deepspeed_backend.zero_settings(config.run_cfg.deepspeed)
        Checkpointer(Path(config.run_cfg.output_dir), dist_info).find(config.run_cfg.resume)
    trainer = Trainer(config, dist_info)
    if config.run_cfg.mode == "testing" or config.run_cfg.zero_shot:
        return trainer.evaluate(0)
    return trainer.train()
