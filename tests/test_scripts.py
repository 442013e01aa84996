"""The recipe launchers of scripts/vast/: the paths they name exist, and without data each says in a
few lines what to fetch and where it goes (exit status 2, no traceback)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import demo_entry

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts" / "vast"
LAUNCHERS = ["finetune_ret.sh", "finetune_cap.sh", "finetune_qa.sh", "pretrain_vast.sh", "vision_captioner.sh",
             "audio_captioner.sh", "label_corpus.sh"]
PATH_PATTERN = re.compile(r"(?:config|scripts|datasets|pretrained_weights)/[\w./-]+\.(?:json|sh|md)|run\.py")


def script_env(tmp_path) -> dict:
    # a checkout without data: the launchers run from the project root, which has no datasets/<benchmark>
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "NPROC_PER_NODE": "1"}


def recipe_lists() -> dict[str, list[str]]:
    lists = {}
    for name in ("finetune_ret.sh", "finetune_cap.sh", "finetune_qa.sh"):
        text = (SCRIPTS / name).read_text()
        match = re.search(r'run_recipes "([^"]+)"', text, re.S)
        lists[name] = match.group(1).replace("\\\n", " ").split()
    return lists


def test_every_path_a_script_names_exists():
    for script in SCRIPTS.glob("*.sh"):
        for path in PATH_PATTERN.findall(script.read_text()):
            if "yourdata" in path or path.startswith("datasets/annotations"):
                continue  # the user's own files, which the script's message asks for
            assert (ROOT / path).exists(), f"{script.name} names {path}, which is not in the repository"
    for script, names in recipe_lists().items():
        assert names, script
        for name in names:
            assert (ROOT / "config/vast/finetune_cfg" / f"{name}.json").is_file(), f"{script}: {name}"
    assert set(recipe_lists()["finetune_ret.sh"]) == {p.stem for p in (ROOT / "config/vast/finetune_cfg").glob("retrieval-*.json")}
    assert set(recipe_lists()["finetune_cap.sh"]) == {p.stem for p in (ROOT / "config/vast/finetune_cfg").glob("caption-*.json")}
    assert set(recipe_lists()["finetune_qa.sh"]) == {p.stem for p in (ROOT / "config/vast/finetune_cfg").glob("VQA-*.json")}


@pytest.mark.parametrize("script", LAUNCHERS)
def test_launcher_without_data_says_what_to_fetch(script, tmp_path):
    args = ["bash", str(SCRIPTS / script)]
    if script.startswith("finetune"):
        args.append(recipe_lists()[script][0])  # one recipe: the detailed message
    elif script == "label_corpus.sh":
        args += [str(tmp_path / "no_videos"), str(tmp_path / "out")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=script_env(tmp_path), cwd=tmp_path)
    message = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, message[-2000:])
    assert "Traceback" not in message and not result.stdout.strip()
    assert 1 <= len(message.splitlines()) <= 8, message
    if script != "label_corpus.sh":
        assert "datasets/" in message and "README.md" in message


def test_all_recipes_of_a_kind_one_line_each(tmp_path):
    result = subprocess.run(["bash", str(SCRIPTS / "finetune_qa.sh")], capture_output=True, text=True, timeout=300,
                            env=script_env(tmp_path))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == len(recipe_lists()["finetune_qa.sh"]) + 1
    assert lines[0].startswith("VQA-msrvtt: missing data") and "finetune_qa.sh VQA-msrvtt" in lines[-1]
    wrong = subprocess.run(["bash", str(SCRIPTS / "finetune_qa.sh"), "VQA-nope"], capture_output=True, text=True,
                           env=script_env(tmp_path))
    assert wrong.returncode == 2 and "unknown recipe 'VQA-nope'" in wrong.stderr


def test_preflight_is_silent_when_everything_is_there(demo_corpus, write_config, tmp_path):
    val = [demo_entry(demo_corpus, "val", "ret_test.json", "ret%tvas")]
    config = write_config([], val, model={"text_encoder_weights": "minilm_l6"})
    result = subprocess.run([sys.executable, "-m", "vast.preflight", "--config", str(config)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    missing_run = subprocess.run([sys.executable, "-m", "vast.preflight", "--config", str(config),
                                  "--pretrain_dir", str(tmp_path / "no_run")], capture_output=True, text=True, cwd=ROOT)
    assert missing_run.returncode == 2 and "pretrained run: " in missing_run.stderr
    assert json.loads(config.read_text())  # the config itself is untouched
