"""run.py as users launch it: plain python, torchrun with 2 processes, torch.distributed.launch;
user mistakes end in one line on stderr and exit status 2, never a traceback."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import demo_entry

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args, launcher=(), timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, *launcher, str(ROOT / "run.py"), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def torchrun(nproc):
    return ("-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()))


@pytest.fixture
def inspect_config(demo_corpus, write_config):
    train = demo_entry(demo_corpus, "train", "ret_train.json", "ret%tvas%tv", batch_size=4)
    val = demo_entry(demo_corpus, "val", "cap_test.json", "cap%tvas", batch_size=4,
                     annfile=str(demo_corpus / "annotations" / "cap_test_coco.json"))
    return write_config([train], [val], run={"mode": "inspect"})


def test_plain_python(inspect_config, tmp_path):
    out = tmp_path / "out"
    result = run(["--config", str(inspect_config), "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr
    hps = json.loads((out / "log" / "hps.json").read_text())
    assert hps["run_cfg"]["mode"] == "inspect" and hps["data_cfg"]["val"][0]["task"] == "cap%tvas"
    log = (out / "log" / "log.txt").read_text()
    assert "world size 1" in log and "vision 4x2x3x64x64" in log and "audio 4x1x256x64" in log


def test_torchrun_two_processes(inspect_config, tmp_path):
    out = tmp_path / "out"
    result = run(["--config", str(inspect_config), "--output_dir", str(out)], launcher=torchrun(2))
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "log" / "log.txt").read_text()
    assert "world size 2 (backend gloo)" in log
    # the global batch of 4 is split over 2 ranks
    assert "vision 2x2x3x64x64" in log
    assert log.count("first batch") == 2  # rank 0 alone writes the log: one line per dataset


def test_torch_distributed_launch(inspect_config, tmp_path):
    out = tmp_path / "out"
    launcher = ("-m", "torch.distributed.launch", "--nproc_per_node", "2", "--master_port", str(free_port()))
    result = run(["--config", str(inspect_config), "--output_dir", str(out)], launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in (out / "log" / "log.txt").read_text()


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_typo_in_a_config_key(demo_corpus, write_config):
    path = write_config([demo_entry(demo_corpus, "train", "ret_train.json", "ret%tv")], [], run={"learnig_rate": 1e-4})
    assert_one_line_error(run(["--config", str(path)]), "learnig_rate", "learning_rate")


def test_typo_in_an_option():
    config = ROOT / "config/vast/finetune_cfg/retrieval-msrvtt.json"
    assert_one_line_error(run(["--config", str(config), "--learning_rat", "1e-5"]), "--learning_rat", "learning_rate")


def test_invalid_group(demo_corpus, write_config):
    path = write_config([demo_entry(demo_corpus, "train", "ret_train.json", "ret%tsv")], [])
    assert_one_line_error(run(["--config", str(path)]), "'tsv'", "tvs")


def test_video_folder_that_does_not_exist(demo_corpus, write_config, tmp_path):
    entry = demo_entry(demo_corpus, "val", "ret_test.json", "ret%tv", vision=str(tmp_path / "no_such_videos"))
    path = write_config([], [entry], run={"mode": "inspect"})
    assert_one_line_error(run(["--config", str(path), "--output_dir", str(tmp_path / "o")]), "no_such_videos", ".vision")


def test_missing_video_file(demo_corpus, write_config, tmp_path):
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps([{"video_id": "video_that_is_not_there", "desc": "x"}]))
    entry = demo_entry(demo_corpus, "val", str(anno), "ret%tv", batch_size=1)
    path = write_config([], [entry], run={"mode": "inspect"})
    assert_one_line_error(run(["--config", str(path), "--output_dir", str(tmp_path / "o")]), "video_that_is_not_there")


def test_original_config_pointed_at_missing_data(tmp_path):
    config = ROOT / "config/vast/finetune_cfg/retrieval-msrvtt.json"
    result = run(["--config", str(config), "--output_dir", str(tmp_path / "o")])
    assert_one_line_error(result, "data_cfg.train[0] (msrvtt_ret).txt", "datasets/annotations/msrvtt/descs_ret_train.json")


def test_error_under_torchrun_is_still_one_line(demo_corpus, write_config):
    path = write_config([demo_entry(demo_corpus, "train", "ret_train.json", "ret%tsv")], [])
    result = run(["--config", str(path)], launcher=torchrun(2))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "'tsv'" in errors[0]


def test_launcher_script_as_two_nodes(inspect_config, tmp_path):
    """scripts/vast/train.sh on two "nodes" of this machine: the rendezvous comes from NNODES,
    NODE_RANK, NPROC_PER_NODE, MASTER_ADDR and MASTER_PORT."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "VIRTUAL_ENV")}
    env.update(NNODES="2", NPROC_PER_NODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               OMP_NUM_THREADS="1")
    script = ROOT / "scripts" / "vast" / "train.sh"
    nodes = [subprocess.Popen(["bash", str(script), "--config", str(inspect_config), "--output_dir", str(out)],
                              env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for rank in range(2)]
    for node in nodes:
        _, stderr = node.communicate(timeout=240)
        assert node.returncode == 0, stderr[-3000:]
    assert "world size 2" in (out / "log" / "log.txt").read_text()
