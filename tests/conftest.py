"""Shared fixtures: a small demo corpus built once per test session, and config writers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vast.data.demo_corpus import build_demo_corpus

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """A small real corpus (mp4 + wav + every annotation format), made by the project's generator."""
    out = tmp_path_factory.mktemp("demo_corpus")
    build_demo_corpus(out, num_clips=24, seed=0, workers=2)
    return out


def demo_entry(corpus: Path, split: str, txt: str, task: str, **extra) -> dict:
    entry = {
        "type": "annoindexed", "name": f"demo_{Path(txt).stem}", "txt": txt if Path(txt).is_absolute() else str(corpus / "annotations" / txt),
        "vision": str(corpus / "videos"), "audio": str(corpus / "audios"),
        "vision_format": "video_rawvideo", "vision_sample_num": 2, "audio_sample_num": 1,
        "task": task, "n_workers": 0, "batch_size": 4,
    }
    if split == "train":
        entry["epoch"] = 1
    entry.update(extra)
    return entry


@pytest.fixture(scope="session")
def captioner_run(tmp_path_factory):
    """A small random VAST run folder laid out as training writes it (log/hps.json + ckpt/), for the
    labeling stages: it writes nonsense captions of at most 8 tokens, quickly and reproducibly."""
    import torch

    from test_model import model_cfg
    from vast.models.checkpoints import atomic_save
    from vast.models.vast import VAST

    torch.manual_seed(5)
    cfg = model_cfg(max_vision_sample_num=4, max_caption_len=8)
    root = tmp_path_factory.mktemp("captioner")
    (root / "log").mkdir()
    (root / "log" / "hps.json").write_text(json.dumps({"run_cfg": {}, "model_cfg": cfg}))
    atomic_save(VAST(cfg).state_dict(), root / "ckpt" / "model_step_1.pt")
    return root


@pytest.fixture
def write_config(tmp_path):
    """Write a config file with the project's default blocks and the given data entries."""

    def write(train=(), val=(), run=None, model=None, name="cfg.json") -> Path:
        run = {"mode": "training" if train else "testing", **(run or {})}
        config = {
            "run_cfg": {"default": str(ROOT / "config/vast/default_run_cfg.json"), **run},
            "model_cfg": {"default": str(ROOT / "config/vast/demo/default_model_cfg.json"), **(model or {})},
            "data_cfg": {"train": list(train), "val": list(val)},
        }
        path = tmp_path / name
        path.write_text(json.dumps(config, indent=2))
        return path

    return write
