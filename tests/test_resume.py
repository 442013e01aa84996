"""Resuming: a run killed with SIGKILL and resumed with `--resume true` ends exactly where the
uninterrupted run ends (parameters and metrics.jsonl), and a kill during a checkpoint write leaves
the previous checkpoint whole."""

import os
import signal
import subprocess
import sys
import time

import torch

from conftest import ROOT, demo_entry
from test_cli import run
from test_training import read_metrics

RUN = {"learning_rate": 3e-4, "clip_lr": 3e-4, "valid_freq": 1, "ckpt_steps": 2, "first_eval": True,
       "log_steps": 1, "save_best": True, "seed": 7}


def two_corpus_config(demo_corpus, write_config):
    """Two corpora of 8 clips, batch 4: retrieval 3 steps (it crosses an epoch), captioning 2;
    evaluation at steps 0 and 5 (the last), checkpoints at 2, 4 and 5."""
    train = [demo_entry(demo_corpus, "train", "ret_train.json", "ret%tvas", steps=3),
             demo_entry(demo_corpus, "train", "cap_train.json", "cap%tvas", steps=2, n_workers=1)]
    for entry in train:
        entry.pop("epoch")
    val = demo_entry(demo_corpus, "val", "ret_test.json", "ret%tvas%tv", batch_size=8)
    return write_config(train, [val], run=RUN, model={"itm_rerank_num": 4})


def command(config, out, *extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return [sys.executable, str(ROOT / "run.py"), "--config", str(config), "--output_dir", str(out), *extra], env


def final_weights(out):
    return torch.load(out / "ckpt" / "model_step_5.pt", weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst == 0.0, f"largest parameter difference {worst}"


def test_sigkill_then_resume_equals_uninterrupted(demo_corpus, write_config, tmp_path):
    config = two_corpus_config(demo_corpus, write_config)
    whole = tmp_path / "whole"
    result = run(["--config", str(config), "--output_dir", str(whole)], timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    args, env = command(config, killed)
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "ckpt" / "training_state_2.pt"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "ckpt" / "model_step_5.pt").exists()

    result = run(["--config", str(config), "--output_dir", str(killed), "--resume", "true"], timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_part = (killed / "log" / "log.txt").read_text().split("resuming from")[-1]
    assert "step 1/5 " not in resumed_part and "step 5/5 " in resumed_part  # continued, not restarted
    assert_same_weights(final_weights(whole), final_weights(killed))
    assert read_metrics(killed) == read_metrics(whole)
    assert [p.name for p in sorted((killed / "ckpt").glob("model_step_*.pt"))] == ["model_step_5.pt"]


KILL_IN_WRITE = """
import os, signal, sys
import vast.engine.state as state

real_save = state.atomic_save

def save_then_die(obj, path):
    if path.name == "training_state_4.pt":  # the model file of step 4 is written, its state is not
        tmp = path.with_name("." + path.name + ".tmp")
        tmp.write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, path)

state.atomic_save = save_then_die
from vast.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_checkpoint_write_keeps_the_previous_one(demo_corpus, write_config, tmp_path):
    config = two_corpus_config(demo_corpus, write_config)
    out = tmp_path / "run"
    args, env = command(config, out)
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, *args[2:]], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    ckpt = out / "ckpt"
    assert (ckpt / "model_step_4.pt").exists() and not (ckpt / "training_state_4.pt").exists()
    assert (ckpt / "training_state_2.pt").is_file()  # remove_before_ckpt waits for a complete newer one
    torch.load(ckpt / "model_step_2.pt", weights_only=True)
    torch.load(ckpt / "training_state_2.pt", weights_only=False)

    result = run(["--config", str(config), "--output_dir", str(out), "--resume", "true"], timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training_state_2.pt" in (out / "log" / "log.txt").read_text()
    assert sorted(p.name for p in ckpt.iterdir()) == sorted([
        "best_demo_ret_test_tvas_t2v_itm_r1.pt", "best_demo_ret_test_tv_t2v_itm_r1.pt",
        "model_step_5.pt", "training_state_5.pt"])  # the incomplete step 4 and its temporary file are gone


def test_resume_refuses_what_it_cannot_continue(demo_corpus, write_config, tmp_path):
    config = two_corpus_config(demo_corpus, write_config)
    out = tmp_path / "empty"
    result = run(["--config", str(config), "--output_dir", str(out), "--resume", "true"])
    assert result.returncode == 2
    assert "no complete checkpoint" in result.stderr and "start without --resume" in result.stderr
    result = run(["--config", str(config), "--output_dir", str(out), "--resume", str(config)])
    assert result.returncode == 2 and "is not a training_state_<step>.pt file" in result.stderr


def test_loader_continues_mid_epoch_and_across_epochs(demo_corpus, write_config):
    """The loader's state after any batch gives, in a new loader, the batches the old one draws next."""
    from vast import distributed
    from vast.config import load_config
    from vast.data.loader import build_loader

    entry = demo_entry(demo_corpus, "train", "ret_train.json", "ret%tvas", batch_size=3, n_workers=1)
    config = load_config(write_config([entry], run={"seed": 3}))
    dist_info = distributed.init_distributed()
    reference = build_loader(config.train[0], config, dist_info)
    ids = [reference.next_batch().ids for _ in range(7)]  # 8 clips in batches of 3: epochs of 3 batches
    assert ids[0] != ids[3]  # each epoch its own order
    for done in (1, 3, 4):
        loader = build_loader(config.train[0], config, dist_info)
        for _ in range(done):
            loader.next_batch()
        saved = loader.state_dict()
        resumed = build_loader(config.train[0], config, dist_info)
        resumed.load_state_dict(saved)
        assert [resumed.next_batch().ids for _ in range(7 - done)] == ids[done:], f"after {done} batches"
