"""Time of one training step, phase by phase (forward, backward, optimizer step), at a small size.

The configuration an issue timed against the original VAST code: an EVA vision tower of width 192
and depth 4 at 112 px (patch 14), a BEATs audio tower of width 64 and depth 2, the MiniLM-L6 BERT
(width 384, 6 layers) as the multimodal encoder, 4 frames and `--audio_clips` audio clips per clip,
global batch 8, task `ret%tvas_cap%tvas`, float32, 2 torch threads. The other model keys are the
project's defaults for full-size training (config/vast/default_model_cfg.json: the original's
caption lengths 40 / 70, subtitle length 70, 1024 fbank frames, contrastive width 512), without
gradient checkpointing, with random tower weights and the MiniLM weights.

The tower configs (an EVA-CLIP model-config JSON and a BEATs cfg JSON) and a small demo corpus are
written into a temporary folder. The same batch is used for every step; each phase is timed
separately and the medians over `--repeats` steps after `--warmup` are printed, with how many
times each tower ran per step and for how long (forward hooks): once each, however many groups and
objectives use it.

    python bench/train_step.py
    python bench/train_step.py --audio_clips 2 --repeats 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vast import distributed
from vast.config import PROJECT_ROOT, load_config
from vast.data.demo_corpus import build_demo_corpus
from vast.engine.optim import OptimConfig, create_optimizer
from vast.engine.trainer import Trainer

TASK = "ret%tvas_cap%tvas"
# EVA-CLIP model-config layout (vast/models/vision.py): head width 64 as EVA-CLIP's default, 3 heads
EVA_CONFIG = {"embed_dim": 512, "vision_cfg": {
    "image_size": 112, "layers": 4, "width": 192, "head_width": 64, "mlp_ratio": 4.0, "patch_size": 14}}
# BEATs cfg keys (vast/models/audio.py); the rest are iter3's
BEATS_CONFIG = {"embed_dim": 64, "encoder_embed_dim": 64, "encoder_layers": 2, "encoder_attention_heads": 4,
                "encoder_ffn_embed_dim": 256, "conv_pos": 16, "conv_pos_groups": 4, "num_buckets": 64,
                "max_distance": 128}


def write_config(folder: Path, corpus: Path, batch_size: int, frames: int, audio_clips: int) -> Path:
    (folder / "eva_w192_d4.json").write_text(json.dumps(EVA_CONFIG))
    (folder / "beats_w64_d2.json").write_text(json.dumps(BEATS_CONFIG))
    config = {
        "run_cfg": {"default": str(PROJECT_ROOT / "config/vast/default_run_cfg.json"),
                    "output_dir": str(folder / "output"), "fp16": False, "bf16": False},
        "model_cfg": {
            "default": str(PROJECT_ROOT / "config/vast/default_model_cfg.json"),
            "vision_encoder_config": str(folder / "eva_w192_d4.json"), "vision_resolution": 112,
            "audio_encoder_config": str(folder / "beats_w64_d2.json"),
            "multimodal_encoder_type": "minilm_l6", "text_encoder_weights": "minilm_l6",
            "vision_encoder_weights": "", "audio_encoder_weights": "", "checkpointing": False,
        },
        "data_cfg": {"train": [{
            "type": "annoindexed", "name": "demo_vast27m", "txt": str(corpus / "annotations/vast27m_train.json"),
            "vision": str(corpus / "videos"), "audio": str(corpus / "audios"), "vision_format": "video_rawvideo",
            "vision_sample_num": frames, "audio_sample_num": audio_clips, "task": TASK, "steps": 1,
            "n_workers": 0, "batch_size": batch_size,
        }], "val": []},
    }
    path = folder / "train_step.json"
    path.write_text(json.dumps(config, indent=2))
    return path


class TowerMeter:
    """Forward hooks on a module: calls and seconds in its forward since the last `reset`."""

    def __init__(self, module):
        self.calls, self.seconds, self._started = 0, 0.0, 0.0
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0

    def _start(self, *_) -> None:
        self._started = time.perf_counter()

    def _stop(self, *_) -> None:
        self.calls += 1
        self.seconds += time.perf_counter() - self._started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="", help="an existing demo corpus (default: build 24 clips in a temp folder)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--audio_clips", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="vast_train_step_") as temp:
        folder = Path(temp)
        corpus = Path(args.corpus) if args.corpus else folder / "corpus"
        if not args.corpus:
            build_demo_corpus(corpus, num_clips=24, seed=0, workers=2)
        config_path = write_config(folder, corpus, args.batch_size, args.frames, args.audio_clips)
        trainer = Trainer(load_config(config_path), distributed.init_distributed())
        loaders, _ = trainer._train_loaders()
        batch = loaders[0].next_batch().to(trainer.dist.device)

    model, task = trainer.model, trainer.task.train()
    optimizer = create_optimizer(model, OptimConfig.from_run_cfg(trainer.run_cfg))
    towers = {name: TowerMeter(getattr(model, name)) for name in ("vision_encoder", "audio_encoder")}
    phases = {"forward": [], "backward": [], "optimizer step": []}
    calls = {name: [] for name in towers}
    tower_seconds = {name: [] for name in towers}
    for repeat in range(args.warmup + args.repeats):
        for meter in towers.values():
            meter.reset()
        started = time.perf_counter()
        losses = task(batch, step=0)
        forward_done = time.perf_counter()
        losses["loss"].backward()
        backward_done = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.run_cfg.grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_done = time.perf_counter()
        if repeat >= args.warmup:  # the first steps allocate and pick kernels
            phases["forward"].append(forward_done - started)
            phases["backward"].append(backward_done - forward_done)
            phases["optimizer step"].append(step_done - backward_done)
            for name, meter in towers.items():
                calls[name].append(meter.calls)
                tower_seconds[name].append(meter.seconds)

    medians = {name: statistics.median(values) for name, values in phases.items()}
    total = sum(medians.values())
    parameters = {name: sum(p.numel() for p in module.parameters()) / 1e6 for name, module in
                  (("vision", model.vision_encoder), ("audio", model.audio_encoder),
                   ("multimodal", model.multimodal_encoder), ("all", model))}
    command = " ".join(["python", "bench/train_step.py", *sys.argv[1:]])
    print(f"command: {command}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, device {trainer.dist.device}, float32, load average before the run "
          f"{load_before:.1f}, after {os.getloadavg()[0]:.1f}")
    print(f"task {batch.task.text}, batch {len(batch.ids)}, {args.frames} frames at "
          f"{model.vision_encoder.image_size} px, {args.audio_clips} audio clip(s); losses: "
          f"{', '.join(k for k in sorted(losses) if k != 'loss')}")
    print("parameters (M): " + "  ".join(f"{name} {value:.1f}" for name, value in parameters.items()))
    print(f"median of {args.repeats} steps after {args.warmup} warm-up steps, same batch:")
    for name, value in medians.items():
        print(f"  {name:<15} {value:6.3f} s  {100 * value / total:5.1f}%   "
              f"(steps: {', '.join(f'{v:.3f}' for v in phases[name])})")
    print(f"  {'step':<15} {total:6.3f} s  ({args.batch_size / total:.1f} samples/s)")
    for name in towers:  # distinct call counts over the timed steps: [1] = once in every step
        print(f"  {name}: calls per step {sorted(set(calls[name]))}, forward "
              f"{statistics.median(tower_seconds[name]):.3f} s (median, part of the forward)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
