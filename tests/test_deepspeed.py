"""The DeepSpeed backend on 2 gloo processes (CPU): ZeRO-2 trains the tiny model along DDP's loss
curve, resumes from its own sharded checkpoint, and writes plain model_step files that
`--mode testing --checkpoint` evaluates."""

import json

import pytest
import torch

from conftest import demo_entry
from test_cli import run, torchrun
from test_training import read_metrics

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (bash preinstall.sh installs it)")

STEPS = 4
# adam_epsilon: see tests/test_accumulation.py (rounding-noise gradients must not move weights by lr)
RUN = {"learning_rate": 1e-4, "clip_lr": 1e-4, "adam_epsilon": 1e-6, "valid_freq": 1, "ckpt_steps": 2, "remove_before_ckpt": False,
       "first_eval": False, "log_steps": 1, "seed": 5, "fp16": False}


def read_losses(out):
    return [json.loads(line)["loss"] for line in (out / "log" / "train.jsonl").read_text().splitlines()]


def weights(out, step=STEPS):
    return torch.load(out / "ckpt" / f"model_step_{step}.pt", weights_only=True)


def largest_difference(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_zero2_matches_ddp_resumes_and_writes_plain_checkpoints(demo_corpus, write_config, tmp_path):
    train = demo_entry(demo_corpus, "train", "ret_train.json", "ret%tvas", batch_size=4, steps=STEPS)
    train.pop("epoch")
    val = demo_entry(demo_corpus, "val", "ret_test.json", "ret%tvas", batch_size=8)
    config = write_config([train], [val], run=RUN, model={"itm_rerank_num": 4})

    def launch(out, *extra):
        result = run(["--config", str(config), "--output_dir", str(out), *extra], launcher=torchrun(2), timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    ddp, zero2, resumed = tmp_path / "ddp", tmp_path / "zero2", tmp_path / "resumed"
    launch(ddp)
    launch(zero2, "--deepspeed", "2")
    assert "ZeRO stage 2" in (zero2 / "log" / "log.txt").read_text()
    ddp_losses, zero2_losses = read_losses(ddp), read_losses(zero2)
    assert len(zero2_losses) == STEPS
    # the same curve; not to the last digit: the tiny audio tower's gradients are near rounding level,
    # and Adam turns their different rounding under ZeRO's reduce-scatter into +-lr steps
    assert zero2_losses == pytest.approx(ddp_losses, rel=5e-3)
    fusion = [k for k in weights(ddp) if k.startswith("multimodal_encoder.")]
    assert largest_difference({k: weights(ddp)[k] for k in fusion}, {k: weights(zero2)[k] for k in fusion}) < 1e-4

    # its own sharded checkpoint, named by the state file; resumed into another folder
    assert (zero2 / "ckpt" / "deepspeed" / "step_2").is_dir()
    launch(resumed, "--deepspeed", "2", "--resume", str(zero2 / "ckpt" / "training_state_2.pt"))
    assert read_losses(resumed) == pytest.approx(zero2_losses[2:], rel=1e-5)
    assert largest_difference(weights(zero2), weights(resumed)) < 1e-5

    # the plain file is what testing mode (and --pretrain_dir, vast.load_model) reads
    tested = tmp_path / "tested"
    result = run(["--config", str(config), "--output_dir", str(tested), "--mode", "testing",
                  "--checkpoint", str(zero2 / "ckpt" / f"model_step_{STEPS}.pt")])
    assert result.returncode == 0, result.stderr[-3000:]
    final = [r for r in read_metrics(zero2) if r["step"] == STEPS]
    assert [r["metrics"] for r in read_metrics(tested)] == [r["metrics"] for r in final]


def test_deepspeed_settings_that_cannot_work_are_refused(demo_corpus, write_config, tmp_path):
    train = demo_entry(demo_corpus, "train", "ret_train.json", "ret%tvas", batch_size=4, steps=1)
    train.pop("epoch")
    config = write_config([train], run=RUN)
    result = run(["--config", str(config), "--output_dir", str(tmp_path / "s3"), "--deepspeed", "3"])
    assert result.returncode == 2 and "ZeRO stage 3 is not supported" in result.stderr
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    result = run(["--config", str(config), "--output_dir", str(tmp_path / "js"), "--deepspeed", str(ds_json)])
    assert result.returncode == 2
    assert "sets 'train_batch_size'; set it with the data entries' batch_size" in result.stderr
