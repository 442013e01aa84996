"""The paper's recipes: every shipped recipe against the original's values, and the original files loading."""

import json
import logging
from pathlib import Path

import pytest

from original_recipes import CONFIGS, PRETRAIN_CORPORA, PRETRAIN_LEARNING_RATE, effective, original_config
from vast.config import load_config
from vast.tasks import TaskType

ROOT = Path(__file__).resolve().parent.parent
FINETUNE = ROOT / "config" / "vast" / "finetune_cfg"
CAPTIONER = ROOT / "config" / "vast" / "captioner_cfg"
PRETRAIN = ROOT / "config" / "vast" / "pretrain_cfg" / "pretrain_vast.json"


def recipe_path(name: str) -> Path:
    return (CAPTIONER if name.startswith("caption-generation") else FINETUNE) / f"{name}.json"


def recipe_values(path: Path) -> dict:
    """A shipped recipe's values under the keys of `original_recipes.effective`."""
    config = load_config(path)
    model, run = config.model_cfg, config.run_cfg
    qa = all(TaskType.QA in e.task.types for e in config.train + config.val)
    values = {"learning_rate": run.learning_rate, "checkpointing": model.checkpointing,
              "first_eval": run.first_eval, "save_best": run.save_best, "valid_freq": run.valid_freq,
              "vision_resolution": model.vision_resolution, "generate_nums": model.generate_nums,
              "captioner_mode": model.captioner_mode, "max_caption_len": model.max_caption_len,
              "beam_size": model.beam_size_qa if qa else model.beam_size}
    tasks = {e.task.text for e in config.train + config.val}
    assert len(tasks) == 1, f"{path.name}: one task for train and test, got {tasks}"
    values["task"] = tasks.pop()
    for prefix, entries in (("train", config.train), ("test", config.val)):
        if not entries:
            continue
        (entry,) = entries
        values.update({
            f"{prefix}.txt": entry.txt, f"{prefix}.vision": entry.vision or None, f"{prefix}.audio": entry.audio or None,
            f"{prefix}.vision_format": entry.vision_format if entry.vision else None,
            f"{prefix}.vision_sample_num": entry.vision_sample_num if entry.vision else None,
            f"{prefix}.audio_sample_num": entry.audio_sample_num if entry.audio else None,
            f"{prefix}.batch_size": entry.batch_size, f"{prefix}.epoch": entry.epoch if prefix == "train" else None,
            f"{prefix}.annfile": entry.annfile or None, f"{prefix}.make_submission": entry.make_submission or None,
            f"{prefix}.max_caption_len": entry.max_caption_len})
    return values


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_recipe_keeps_the_original_values_or_says_why(name):
    path = recipe_path(name)
    assert path.is_file(), f"the original's recipe {name} has no counterpart {path}"
    notes = json.loads(path.read_text()).get("_note", {})
    ours, original = recipe_values(path), effective(name)
    differing = {key: (original[key], ours.get(key)) for key in original if ours.get(key) != original[key]}
    unexplained = {key: pair for key, pair in differing.items() if key not in notes}
    assert not unexplained, f"{name}: (original, ours) differ without a _note: {unexplained}"
    stale = set(notes) - set(differing) - {"recipe"}
    assert not stale, f"{name}: _note explains values that equal the original's: {stale}"


def test_every_recipe_is_the_originals_or_says_what_it_adds():
    for path in FINETUNE.glob("*.json"):
        if path.stem not in CONFIGS:
            assert "recipe" in json.loads(path.read_text()).get("_note", {}), f"{path.name}: an added recipe needs a _note"


@pytest.mark.parametrize("path", sorted(FINETUNE.glob("*.json")) + [PRETRAIN], ids=lambda p: p.stem)
def test_no_recipe_validates_on_its_training_file(path):
    config = load_config(path)
    for entry in config.train + config.val:
        assert entry.task.entries  # every task string parses into valid (type, group) pairs
    trained_on = {e.txt for e in config.train}
    for entry in config.val:
        assert entry.txt not in trained_on, f"{path.name}: {entry.where} validates on a training file {entry.txt}"


def test_pretraining_recipe_has_the_seven_corpora_and_their_budgets():
    config = load_config(PRETRAIN)
    assert config.run_cfg.learning_rate == PRETRAIN_LEARNING_RATE and config.model_cfg.checkpointing
    assert len(config.train) == len(PRETRAIN_CORPORA) == 7
    for entry, (folder, name, task, media, fmt, frames, clips, steps, batch, _) in zip(config.train, PRETRAIN_CORPORA):
        assert (entry.name, entry.task.text, entry.steps, entry.batch_size) == (name, task, steps, batch)
        assert entry.txt == f"datasets/annotations/{folder}/train_desc.json"
        assert (entry.vision_format if media else None) == fmt
        assert entry.vision_sample_num == (frames or 1) and entry.audio_sample_num == (clips or 1)
    assert sum(e.steps for e in config.train) == 230000


# --- the original release's files ------------------------------------------------------------

# The three released files with defects, as they are: a data-entry max_caption_len (VQA-vqav2), a
# stray quote in the task (retrieval-mscoco), default files the release never had (pretrain_vast).
DEFECTIVE = {
    "VQA-vqav2": {
        "run_cfg": {"default": "./config/vast/default_run_cfg.json"},
        "model_cfg": {"default": "./config/vast/default_model_cfg.json"},
        "data_cfg": {
            "train": [{"type": "annoindexed", "training": True, "name": "vqav2_trainval",
                       "txt": "datasets/annotations/mscoco/descs_qa_train.json", "vision": "datasets/srcdata/mscoco/images",
                       "max_caption_len": 30, "task": "qa%tv", "vision_format": "image_rawimage", "epoch": 20,
                       "n_workers": 8, "batch_size": 128}],
            "val": [{"type": "annoindexed", "training": False, "name": "vqav2_test",
                     "txt": "datasets/annotations/mscoco/descs_qa_test.json", "vision": "datasets/srcdata/mscoco/images",
                     "vision_format": "image_rawimage", "max_caption_len": 30, "task": "qa%tv", "n_workers": 8,
                     "batch_size": 64, "make_submission": True}]}},
    "retrieval-mscoco": {
        "run_cfg": {"default": "./config/vast/default_run_cfg.json"},
        "model_cfg": {"default": "./config/vast/default_model_cfg.json"},
        "data_cfg": {
            "train": [{"type": "annoindexed", "training": True, "name": "mscoco_ret",
                       "txt": "datasets/annotations/mscoco/descs_cap_train.json", "vision": "datasets/srcdata/mscoco/images",
                       "vision_format": "image_rawimage", "task": "'ret%tv", "epoch": 5, "n_workers": 8,
                       "batch_size": 256}],
            "val": [{"type": "annoindexed", "training": False, "name": "mscoco_ret",
                     "txt": "datasets/annotations/mscoco/descs_cap_test.json", "vision": "datasets/srcdata/mscoco/images",
                     "vision_format": "image_rawimage", "task": "'ret%tv", "n_workers": 8, "batch_size": 128}]}},
    "pretrain_vast": {
        "run_cfg": {"default": "./config/default_run_cfg.json", "learning_rate": 5e-05},
        "model_cfg": {"default": "./config/newvlp/default_model_cfg.json", "vision_encoder_type": "evaclip01_giant"},
        "data_cfg": {"train": [
            {"type": "annoindexed", "training": True, "name": "vast27m", "txt": "/PATH/TO/vast27m/train_desc.json",
             "vision": "/PATH/TO/vast27m/videos", "audio": "/PATH/TO/vast27m/audios", "datatype": "video_rawvideo",
             "vision_sample_num": 1, "audio_sample_num": 1, "task": "ret%tvas%tvs%tv%ta_cap%tvas%tvs%tv%ta",
             "steps": 60000, "n_workers": 8, "batch_size": 1024},
            {"type": "annoindexed", "training": True, "name": "valor1m", "txt": "/PATH/TO/valor1m/train_desc.json",
             "vision": "/PATH/TO/valor1m/videos", "audio": "/PATH/TO/valor1m/audios", "vision_format": "video_rawvideo",
             "vision_sample_num": 1, "audio_sample_num": 1, "task": "ret%tva%tv%ta_cap%tva%tv%ta", "steps": 25000,
             "n_workers": 4, "batch_size": 1024},
            {"type": "annoindexed", "name": "cc4m", "training": True, "vision_format": "image_rawimage",
             "vision": "/PATH/TO/cc4m/images", "txt": "/PATH/TO/cc4m/train_desc.json", "task": "ret%tv_cap%tv",
             "steps": 55000, "n_workers": 2, "batch_size": 2048},
            {"type": "annoindexed", "name": "cc12m", "training": True, "vision_format": "image_rawimage",
             "vision": "/PATH/TO/cc12m/images", "txt": "/PATH/TO/cc12m/train_desc.json", "task": "ret%tv_cap%tv",
             "steps": 20000, "n_workers": 4, "batch_size": 2048},
            {"type": "annoindexed", "name": "laion2b", "training": True, "vision_format": "image_rawimage",
             "vision": "/PATH/TO/laion2b/images", "txt": "/PATH/TO/laion2b/train_desc.json", "task": "ret%tv_cap%tv",
             "steps": 55000, "n_workers": 4, "batch_size": 2048},
            {"type": "annoindexed", "training": True, "name": "audioset-SL", "txt": "/PATH/TO/AudioSetSL/train_desc.json",
             "audio": "/PATH/TO/AudioSetSL/audios", "audio_sample_num": 1, "task": "ret%ta_cap%ta", "steps": 7500,
             "n_workers": 4, "batch_size": 1024},
            {"type": "annoindexed", "training": True, "name": "freesound", "txt": "/PATH/TO/FreeSound/train_desc.json",
             "audio": "/PATH/TO/FreeSound/audios", "audio_sample_num": 2, "task": "ret%ta_cap%ta", "steps": 7500,
             "n_workers": 4, "batch_size": 1024}]}},
}
ORIGINAL_FILES = sorted(set(CONFIGS) - set(DEFECTIVE)) + sorted(DEFECTIVE)


def test_the_table_covers_the_29_original_files():
    assert len(ORIGINAL_FILES) == 29


@pytest.mark.parametrize("name", ORIGINAL_FILES)
def test_original_config_file_loads(name, tmp_path, caplog):
    raw = DEFECTIVE.get(name) or original_config(name)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING):
        config = load_config(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if name == "retrieval-mscoco":
        assert [e.task.text for e in config.train + config.val] == ["ret%tv", "ret%tv"]
        assert len(warnings) == 2 and all("stray quote" in w and "'ret%tv" in w for w in warnings)
    elif name == "pretrain_vast":
        assert len(config.train) == 7 and config.run_cfg.learning_rate == 5e-5
        assert config.train[0].vision_format == "video_rawvideo"  # given as the older key 'datatype'
        assert len(warnings) == 2 and all("project's defaults" in w for w in warnings)
        assert "./config/default_run_cfg.json" in warnings[0] and "newvlp" in warnings[1]
    elif name == "VQA-vqav2":
        assert config.model_cfg.max_question_len == 30 and config.model_cfg.max_caption_len == 40
        assert config.val[0].make_submission and not warnings
    else:
        assert not warnings, warnings


def test_entries_that_disagree_on_max_caption_len_are_refused(tmp_path):
    raw = json.loads(json.dumps(DEFECTIVE["VQA-vqav2"]))
    raw["data_cfg"]["val"][0]["max_caption_len"] = 20
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(Exception, match="different max_caption_len"):
        load_config(path)
