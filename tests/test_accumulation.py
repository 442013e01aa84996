"""One global batch, however it is split: 2 processes at micro-batch b, and 1 process accumulating
2 micro-batches of b, end training with the parameters of 1 process at batch 2b (within 1e-5);
under DDP, gradient checkpointing changes nothing and frozen towers and the clip_lr group hold.

Dropout is off (a MiniLM config with zero dropout; the tiny towers have none) and the objectives'
random choices come from vast.draws, so the only differences left are floating-point summation order.
Runs are kept per module: several tests compare against the same one."""

import json
from pathlib import Path

import pytest
import torch

from conftest import demo_entry
from test_cli import run, torchrun

STEPS = 2
# Adam divides each gradient by its own size: a gradient that is zero in exact arithmetic (attention
# key biases) is pure rounding noise, and its sign flips with the summation order, moving the weight
# by +-lr. An epsilon above that noise keeps such updates small; real gradients are far larger.
RUN = {"learning_rate": 1e-4, "clip_lr": 1e-4, "scheduler": "constant", "warmup_ratio": 0.0, "adam_epsilon": 1e-6,
       "first_eval": False, "fp16": False, "seed": 11, "log_steps": 1}


@pytest.fixture(scope="module")
def bert_without_dropout(tmp_path_factory) -> Path:
    from vast.models.text import minilm_path

    config = json.loads((Path(minilm_path()) / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path = tmp_path_factory.mktemp("bert") / "config.json"
    path.write_text(json.dumps(config))
    return path


RUNS: dict[str, dict] = {}  # run name -> final weights


def config_for(demo_corpus, write_config, bert_config, name, itm_ratio=0.1, model=None, **run_cfg):
    entry = demo_entry(demo_corpus, "train", "ret_train.json", "ret%tvas", batch_size=4, steps=STEPS)
    entry.pop("epoch")
    return write_config([entry], run={**RUN, **run_cfg}, name=f"{name}.json",
                        model={"itm_ratio": itm_ratio, "text_encoder_config": str(bert_config), **(model or {})})


@pytest.fixture
def train(demo_corpus, write_config, bert_without_dropout, tmp_path):
    """Train STEPS steps of ret%tvas at global batch 4 and return the final weights."""

    def train_with(name, processes=1, itm_ratio=0.1, model=None, **run_cfg):
        if name not in RUNS:
            config = config_for(demo_corpus, write_config, bert_without_dropout, name, itm_ratio, model, **run_cfg)
            out = tmp_path / name
            launcher = torchrun(processes) if processes > 1 else ()
            result = run(["--config", str(config), "--output_dir", str(out)], launcher=launcher, timeout=400)
            assert result.returncode == 0, result.stderr[-3000:]
            RUNS[name] = torch.load(out / "ckpt" / f"model_step_{STEPS}.pt", weights_only=True)
        return RUNS[name]

    return train_with


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_processes_equal_one_process_at_the_same_global_batch(train):
    one = train("one")
    two = train("two", processes=2)
    assert largest_difference(one, two) < 1e-5


def test_accumulation_with_global_negatives_equals_the_whole_batch(train):
    whole = train("whole", itm_ratio=0.0)
    accumulated = train("accumulated", itm_ratio=0.0, gradient_accumulation_steps=2)
    assert largest_difference(whole, accumulated) < 1e-5
    # 2 processes x 2 micro-steps of 1 clip: the cache spans ranks and micro-steps; gradient
    # checkpointing on (under DDP) changes nothing either
    both = train("two_accumulated", processes=2, itm_ratio=0.0, gradient_accumulation_steps=2,
                 model={"checkpointing": True})
    assert largest_difference(whole, both) < 1e-5
    # the comparison can tell: negatives from each micro-batch alone train a different model
    local = train("local", itm_ratio=0.0, gradient_accumulation_steps=2, contrastive_negatives="micro_batch")
    assert largest_difference(whole, local) > 1e-4


def test_ddp_with_frozen_towers_and_clip_lr(train, demo_corpus, write_config, bert_without_dropout):
    two = train("two", processes=2)
    # the starting weights: the model every rank builds under the run seed
    from vast.config import load_config
    from vast.engine.trainer import seed_everything
    from vast.models.build import build_model

    seed_everything(RUN["seed"])
    config = config_for(demo_corpus, write_config, bert_without_dropout, "start")
    start = build_model(load_config(config)).state_dict()
    frozen = train("two_frozen_audio_clip_lr_0", processes=2, model={"frozen_audio": True}, clip_lr=0.0)
    for prefix in ("audio_encoder.", "vision_encoder."):  # frozen; at clip_lr 0
        assert largest_difference({k: v for k, v in start.items() if k.startswith(prefix)},
                                  {k: v for k, v in frozen.items() if k.startswith(prefix)}) == 0.0
    rest = [k for k in start if k.startswith("multimodal_encoder.")]
    assert largest_difference({k: start[k] for k in rest}, {k: frozen[k] for k in rest}) > 1e-5
    assert largest_difference({k: start[k] for k in rest}, {k: two[k] for k in rest}) > 1e-5


def test_global_batch_must_divide_over_processes_and_micro_steps(demo_corpus, write_config):
    entry = demo_entry(demo_corpus, "train", "ret_train.json", "ret%tvas", batch_size=6, steps=1)
    entry.pop("epoch")
    config = write_config([entry], run={**RUN, "gradient_accumulation_steps": 4})
    result = run(["--config", str(config), "--output_dir", str(config.parent / "out")])
    assert result.returncode == 2
    assert "batch_size: 6 does not divide into 1 process(es) x 4 accumulation steps" in result.stderr
