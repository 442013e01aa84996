"""Training and evaluation through run.py on the small demo corpus: outputs of DESIGN 2.5, testing
mode from a checkpoint, zero-shot, pretrain_dir chaining, and DDP training with 2 processes."""

import json

import pytest
import torch

from conftest import demo_entry
from test_cli import run, torchrun

TINY_RUN = {"learning_rate": 3e-4, "clip_lr": 3e-4, "valid_freq": 2, "first_eval": True, "log_steps": 1,
            "save_best": True, "tensorboard": True}


def small_config(demo_corpus, write_config, train_task="ret%tvas", **run_cfg):
    train = demo_entry(demo_corpus, "train", "ret_train.json", train_task, batch_size=4, steps=2)
    train.pop("epoch")
    val = demo_entry(demo_corpus, "val", "ret_test.json", "ret%tvas%tv", batch_size=8)
    return write_config([train], [val], run={**TINY_RUN, **run_cfg}, model={"itm_rerank_num": 4})


def read_metrics(out):
    return [json.loads(line) for line in (out / "log" / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_checkpoints_metrics_and_reloads(demo_corpus, write_config, tmp_path):
    out = tmp_path / "run"
    result = run(["--config", str(small_config(demo_corpus, write_config)), "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(out)
    assert {r["step"] for r in records} == {0, 1, 2}  # first_eval, then every half of the 2 steps
    last = [r for r in records if r["step"] == 2]
    assert {r["group"] for r in last} == {"tvas", "tv"}
    for record in last:
        assert set(record["metrics"]) == {"t2v_itc", "t2v_itm"}
        assert set(record["metrics"]["t2v_itm"]) == {"r1", "r5", "r10", "rmean", "medr", "meanr"}
    ckpt = out / "ckpt"
    assert (ckpt / "model_step_2.pt").is_file() and (ckpt / "training_state_2.pt").is_file()
    assert not (ckpt / "model_step_1.pt").exists()  # remove_before_ckpt
    assert list(ckpt.glob("best_*.pt"))
    steps = [json.loads(line) for line in (out / "log" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2]
    for record in steps:
        assert set(record["losses"]) == {"contra_tvas", "itm_tvas"}
        assert record["loss"] == pytest.approx(sum(record["losses"].values()), rel=1e-5)
        assert record["samples_per_s"] > 0 and 0 <= record["data_wait"] <= 1 and record["peak_memory_mb"] > 0
    assert list((out / "log" / "tensorboard").glob("events.out.tfevents.*"))
    state = torch.load(ckpt / "model_step_2.pt", weights_only=True)
    assert "multimodal_encoder.bert.encoder.layer.0.crossattention.self.query.weight" in state
    assert "contra_head_vas.weight" in state
    training_state = torch.load(ckpt / "training_state_2.pt", weights_only=False)
    assert {"optimizer", "scheduler", "scaler", "step"} <= set(training_state)

    # testing mode from the checkpoint reproduces the final evaluation
    tested = tmp_path / "tested"
    result = run(["--config", str(small_config(demo_corpus, write_config)), "--output_dir", str(tested),
                  "--mode", "testing", "--checkpoint", str(ckpt / "model_step_2.pt")])
    assert result.returncode == 0, result.stderr[-3000:]
    again = {r["group"]: r["metrics"] for r in read_metrics(tested)}
    for record in last:
        assert again[record["group"]]["t2v_itc"] == record["metrics"]["t2v_itc"]

    # --pretrain_dir starts the next run from the newest model_step and inherits the architecture keys
    child = tmp_path / "child"
    result = run(["--config", str(small_config(demo_corpus, write_config)), "--output_dir", str(child),
                  "--pretrain_dir", str(out), "--zero_shot"])
    assert result.returncode == 0, result.stderr[-3000:]
    zero_shot = {r["group"]: r["metrics"] for r in read_metrics(child)}
    assert zero_shot == again
    assert "model_step_2.pt" in (child / "log" / "log.txt").read_text()


def test_ddp_training_with_two_processes(demo_corpus, write_config, tmp_path):
    out = tmp_path / "ddp"
    config = small_config(demo_corpus, write_config, train_task="ret%tvas%tv", first_eval=False, valid_freq=1)
    result = run(["--config", str(config), "--output_dir", str(out)], launcher=torchrun(2), timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "log" / "log.txt").read_text()
    assert "world size 2" in log and "step 2/2" in log
    records = read_metrics(out)
    assert {r["group"] for r in records} == {"tvas", "tv"}
    assert (out / "ckpt" / "model_step_2.pt").is_file()


def test_cpu_autocast_is_bf16_only_where_native(monkeypatch):
    from types import SimpleNamespace

    from vast import precision

    cpu = torch.device("cpu")
    asked = SimpleNamespace(fp16=False, bf16=True)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    context = precision.autocast_context(asked, cpu)
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    with context:
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    # a CPU without native bf16 would emulate it, slower than float32: run float32 there
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert not isinstance(precision.autocast_context(asked, cpu), torch.autocast)
    # fp16 is not offered on the CPU, and nothing asked means float32
    assert not isinstance(precision.autocast_context(SimpleNamespace(fp16=True, bf16=False), cpu), torch.autocast)


def test_two_type_step_runs_each_tower_once(demo_corpus, write_config, tmp_path):
    """Retrieval and captioning of one batch share one encoding: each tower (and the subtitle
    encoding) runs once per step, not once per task type."""
    from vast import distributed
    from vast.config import load_config
    from vast.engine.trainer import Trainer

    train = demo_entry(demo_corpus, "train", "cap_train.json", "ret%tvas_cap%tvas", steps=1)
    train.pop("epoch")
    config = load_config(write_config([train]), {"output_dir": [str(tmp_path / "run")]})
    trainer = Trainer(config, distributed.init_distributed())
    loaders, _ = trainer._train_loaders()
    batch = loaders[0].next_batch().to(trainer.dist.device)
    model = trainer.model
    calls = {"vision": 0, "audio": 0, "encode_media": 0}
    model.vision_encoder.register_forward_hook(lambda *_: calls.__setitem__("vision", calls["vision"] + 1))
    model.audio_encoder.register_forward_hook(lambda *_: calls.__setitem__("audio", calls["audio"] + 1))
    encode_media = model.encode_media

    def counted_encode_media(*args, **kwargs):
        calls["encode_media"] += 1  # subtitles are encoded here, with the towers
        return encode_media(*args, **kwargs)

    model.encode_media = counted_encode_media
    losses = trainer.task.train()(batch)
    assert {"contra_tvas", "itm_tvas", "caption_tvas"} <= set(losses)
    assert calls == {"vision": 1, "audio": 1, "encode_media": 1}
    losses["loss"].backward()
