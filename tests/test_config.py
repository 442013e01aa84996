"""Config loading: VAST-style inheritance, command-line overrides, validation and its error lines."""

import json
from pathlib import Path

import pytest

from vast.config import (
    DATA_OVERRIDES, check_data_paths, load_config, load_from_command_line, parse_command_line,
)
from vast.errors import ConfigError
from vast.tasks import TaskType

ROOT = Path(__file__).resolve().parent.parent
LABELING_SETTINGS = "label-corpus.json"  # not a run.py config: read by vast.labeling.config (its own tests)
SHIPPED = sorted(p for p in (ROOT / "config" / "vast").glob("*/*.json")
                 if not p.name.startswith("default_") and p.name != LABELING_SETTINGS)


def entry(split="train", **extra):
    base = {"type": "annoindexed", "training": split == "train", "name": "toy", "txt": "anno.json",
            "vision": "videos", "audio": "audios", "vision_format": "video_rawvideo",
            "vision_sample_num": 8, "audio_sample_num": 1, "task": "ret%tvas", "n_workers": 0, "batch_size": 8}
    if split == "train":
        base["epoch"] = 2
    base.update(extra)
    return base


def one_line_error(callable_, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        callable_(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_parses(path):
    config = load_config(path)
    assert config.train or config.val
    for data in config.train + config.val:
        assert data.task.entries


def test_defaults_then_file_then_command_line(write_config):
    path = write_config([entry()], [entry("val", vision_sample_num=16)], run={"learning_rate": 2e-5})
    config = load_config(path)
    assert config.run_cfg.learning_rate == 2e-5  # file beats defaults
    assert config.run_cfg.clip_lr == 5e-7  # untouched default
    assert config.model_cfg.vision_encoder_type == "eva_tiny"  # from the demo defaults file
    config = load_config(path, {"learning_rate": ["3e-5"], "beam_size": ["5"], "checkpointing": ["false"]})
    assert config.run_cfg.learning_rate == 3e-5 and config.model_cfg.beam_size == 5
    assert config.model_cfg.checkpointing is False


def test_original_readme_overrides(write_config):
    path = write_config([entry()], [entry("val")])
    argv = ["--config", str(path), "--learning_rate", "2e-5", "--checkpointing", "true", "--first_eval", "true",
            "--save_best", "true", "--output_dir", "out/x", "--train_audio_sample_num", "3",
            "--test_audio_sample_num", "2", "--train_vision_sample_num", "4", "--test_vision_sample_num", "12",
            "--train_batch_size", "16", "--test_batch_size", "32", "--train_epoch", "1.5", "--test_task", "ret%tv",
            "--vision_transforms", "none", "--zero_shot", "--mode", "testing", "--betas", "0.9", "0.99",
            "--captioner_mode", "true", "--generate_nums", "3", "--local-rank=0"]
    config = load_from_command_line(argv)
    train, val = config.train[0], config.val[0]
    assert (train.audio_sample_num, val.audio_sample_num) == (3, 2)
    assert (train.vision_sample_num, val.vision_sample_num) == (4, 12)
    assert (train.batch_size, val.batch_size, train.epoch) == (16, 32, 1.5)
    assert val.task.text == "ret%tv" and train.task.text == "ret%tvas"
    assert train.vision_transforms == val.vision_transforms == "none"
    assert config.run_cfg.zero_shot is True and config.run_cfg.mode == "testing"
    assert config.run_cfg.betas == [0.9, 0.99] and config.run_cfg.output_dir == "out/x"
    assert config.model_cfg.captioner_mode is True and config.model_cfg.generate_nums == 3
    assert config.model_cfg.max_audio_sample_num == 3  # embedding tables follow the training sets


def test_equals_form_and_flag_form():
    command_line = parse_command_line(["--config=a.json", "--zero_shot", "--seed=3", "--local_rank", "1"])
    assert command_line.config == "a.json"
    assert command_line.overrides == {"zero_shot": [], "seed": ["3"]}


def test_every_data_override_is_known_to_the_entry_schema(write_config):
    path = write_config([entry()], [entry("val")])
    values = {"epoch": "2", "steps": "10", "vision_sample_num": "2", "audio_sample_num": "2",
              "batch_size": "4", "task": "ret%tv", "vision_transforms": "none"}
    for option, (_, key) in DATA_OVERRIDES.items():
        load_config(path, {option: [values[key]]})


def test_hps_written_and_pretrain_dir_inheritance(write_config, tmp_path):
    path = write_config([entry()], [entry("val")], model={"audio_melbins": 128})
    pretrained = load_config(path, {"output_dir": [str(tmp_path / "pre")], "vision_encoder_type": ["evaclip01_giant"]})
    hps = pretrained.write_hps()
    saved = json.loads(hps.read_text())
    assert saved["model_cfg"]["audio_melbins"] == 128 and saved["data_cfg"]["train"][0]["task"] == "ret%tvas"
    assert saved["run_cfg"]["output_dir"] == str(tmp_path / "pre")

    child_path = write_config([entry()], [entry("val")], name="child.json")
    child = load_config(child_path, {"pretrain_dir": [str(tmp_path / "pre")]})
    assert child.model_cfg.audio_melbins == 128  # in inherit_keys
    assert child.model_cfg.vision_encoder_type == "evaclip01_giant"
    assert child.model_cfg.beam_size == 3  # not inherited
    overridden = load_config(child_path, {"pretrain_dir": [str(tmp_path / "pre")], "audio_melbins": ["64"]})
    assert overridden.model_cfg.audio_melbins == 64  # the command line still wins


def test_parsed_task_objects(write_config):
    config = load_config(write_config([entry(task="ret%tvas%tv_cap%tv")], [entry("val")]))
    assert config.train[0].task.types == (TaskType.RETRIEVAL, TaskType.CAPTION)


def test_bf16_turns_fp16_off_and_output_dir_default(write_config):
    config = load_config(write_config([entry()], [entry("val")], run={"bf16": True}))
    assert config.run_cfg.fp16 is False
    assert config.run_cfg.output_dir == str(Path("output") / "cfg")


def test_datatype_is_the_old_name_of_vision_format(write_config):
    raw = entry(datatype="video_frame")
    raw.pop("vision_format")
    config = load_config(write_config([raw], [entry("val")]))
    assert config.train[0].vision_format == "video_frame"


@pytest.mark.parametrize(
    "train, overrides, fragments",
    [
        ([entry()], {"learning_rat": ["1"]}, ["unknown option --learning_rat", "learning_rate"]),
        ([entry()], {"learning_rate": ["fast"]}, ["--learning_rate", "expected a number", "'fast'"]),
        ([entry()], {"fp16": ["maybe"]}, ["--fp16", "true or false"]),
        ([entry()], {"mode": ["train"]}, ["--mode", "'training'"]),
        ([entry()], {"train_task": ["ret%tsv"]}, ["--train_task", "'tsv'", "tvs"]),
        ([entry()], {"train_batch_size": ["0"]}, ["--train_batch_size", "at least 1"]),
        ([entry(task="ret%tsv")], {}, ["data_cfg.train[0] (toy).task", "'tsv'"]),
        ([entry(vision_fromat="video_rawvideo")], {}, ["data_cfg.train[0] (toy)", "vision_fromat", "vision_format"]),
        ([entry(vision_format="video")], {}, ["vision_format", "video_rawvideo"]),
        ([entry(vision_transforms="flip")], {}, ["vision_transforms", "crop_flip"]),
        ([entry(batch_size="big")], {}, ["batch_size", "an integer"]),
        ([entry(epoch=None)], {}, ["needs 'epoch' or 'steps'"]),
        ([{k: v for k, v in entry().items() if k != "txt"}], {}, ["missing required key 'txt'"]),
        ([entry(training=False)], {}, ["'training' is False"]),
        ([], {"mode": ["training"]}, ["needs data_cfg.train"]),
    ],
)
def test_error_lines(write_config, train, overrides, fragments):
    message = one_line_error(load_config, write_config(train, [entry("val")]), overrides)
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_block_keys_name_the_file_and_key(write_config, tmp_path):
    message = one_line_error(load_config, write_config([entry()], [], run={"learnig_rate": 1e-4}))
    assert "run_cfg.learnig_rate" in message and "learning_rate" in message and "cfg.json" in message
    message = one_line_error(load_config, write_config([entry()], [], model={"itm_rerank": 5}))
    assert "model_cfg.itm_rerank" in message and "itm_rerank_num" in message
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"run_cfg": {}, "data_cfgs": {}}))
    assert "data_cfgs" in one_line_error(load_config, bad)


def test_missing_and_malformed_files(tmp_path, write_config):
    assert "config file not found" in one_line_error(load_config, tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    assert "not valid JSON" in one_line_error(load_config, broken)
    missing_default = tmp_path / "c.json"
    missing_default.write_text(json.dumps({"run_cfg": {"default": "./config/nowhere.json"}, "data_cfg": {"val": [entry("val")]}}))
    assert "nowhere.json" in one_line_error(load_config, missing_default)
    assert "--config" in one_line_error(parse_command_line, ["--seed", "1"])
    assert "unexpected argument" in one_line_error(parse_command_line, ["stray", "--config", "x"])
    path = write_config([entry()], [entry("val")])
    assert "pretrain_dir" in one_line_error(load_config, path, {"pretrain_dir": [str(tmp_path / "nowhere")]})


def test_inert_original_options_are_accepted_with_a_warning(write_config, caplog):
    load_config(write_config([entry()], [entry("val")]), {"amp": ["apex"], "max_generation_len": ["30"]})
    assert "--amp has no effect" in caplog.text


def test_check_data_paths_names_the_missing_file(write_config, tmp_path):
    (tmp_path / "videos").mkdir()
    anno = tmp_path / "anno.json"
    anno.write_text("[]")
    ok = entry(txt=str(anno), vision=str(tmp_path / "videos"), audio="")
    check_data_paths(load_config(write_config([ok], [])))
    missing_txt = load_config(write_config([entry(txt=str(tmp_path / "descs_ret_train.json"))], []))
    message = one_line_error(check_data_paths, missing_txt)
    assert "data_cfg.train[0] (toy).txt" in message and "descs_ret_train.json" in message
    missing_videos = load_config(write_config([dict(ok, vision=str(tmp_path / "no_videos"))], []))
    assert "no_videos" in one_line_error(check_data_paths, missing_videos)
    missing_audio = load_config(write_config([dict(ok, audio=str(tmp_path / "no_audios"))], []))
    assert "no_audios" in one_line_error(check_data_paths, missing_audio)
    # an audio-only task does not need the video folder when an audio folder is given
    (tmp_path / "audios").mkdir()
    audio_only = dict(ok, task="ret%ta", vision=str(tmp_path / "no_videos"), audio=str(tmp_path / "audios"))
    check_data_paths(load_config(write_config([audio_only], [])))


def test_derived_keys_land_in_the_blocks(write_config):
    config = load_config(write_config([entry(vision_sample_num=6)], [entry("val")], run={"bf16": True}))
    assert config.model_cfg["max_vision_sample_num"] == 6 and config.run_cfg["fp16"] is False
    assert config.to_json()["model_cfg"]["max_vision_sample_num"] == 6


def test_defaults_files_are_the_schema():
    """config/vast/default_*_cfg.json are generated from vast.config.keys (`python -m vast.config --write-defaults`)."""
    from vast.config import defaults

    for block in ("run_cfg", "model_cfg"):
        written = json.loads((ROOT / "config" / "vast" / f"default_{block}.json").read_text())
        assert written == defaults(block), f"regenerate: python -m vast.config --write-defaults ({block})"


def test_dataset_mix_types():
    from vast.engine.trainer import dataset_schedule

    assert dataset_schedule([3, 1, 2], 6, seed=0, mix="round_robin") == [0, 1, 2, 0, 2, 0]
    assert dataset_schedule([2, 1], 5, seed=0, mix="round_robin") == [0, 1, 0, 0, 1]  # repeated to the total
    shuffled = dataset_schedule([3, 1, 2], 6, seed=0, mix="random")
    assert sorted(shuffled) == [0, 0, 0, 1, 2, 2] and shuffled == dataset_schedule([3, 1, 2], 6, seed=0)


def test_run_cfg_vision_resolution_reaches_the_model(write_config):
    """The original read the resolution from run_cfg (its launchers pass --vision_resolution 384)."""
    path = write_config([entry()], [entry("val")], run={"vision_resolution": 384})
    assert load_config(path).model_cfg.vision_resolution == 384
    path = write_config([entry()], [entry("val")], run={"vision_resolution": 384}, model={"vision_resolution": 448})
    assert load_config(path).model_cfg.vision_resolution == 448
    assert load_config(path, {"vision_resolution": ["480"]}).model_cfg.vision_resolution == 480


def test_inert_model_keys_warn(write_config, caplog):
    path = write_config([entry()], [entry("val")], model={"model_type": "vast", "evaluation_type": "evaluation_mm"})
    with caplog.at_level("WARNING"):
        load_config(path)
    assert sum("has no effect" in r.getMessage() for r in caplog.records) == 2


def test_every_schema_key_is_read_somewhere():
    """One default per key, and every key read: a key nothing reads belongs on the inert list."""
    import re

    from vast.config import DATA_KEYS, MODEL_KEYS, RUN_KEYS

    source = "".join(p.read_text() for p in (ROOT / "vast").rglob("*.py") if p.name != "keys.py")
    dynamic = {"vision_encoder_config", "audio_encoder_config", "text_encoder_config"}  # f"{kind}_encoder_config"
    for keys in (RUN_KEYS, MODEL_KEYS, DATA_KEYS):
        unread = [k for k in keys if k not in dynamic and not re.search(r'["\.]%s\b' % re.escape(k), source)]
        assert not unread, unread


def test_text_encoder_config_folder_gives_the_tokenizer(tmp_path):
    from vast.models.text import minilm_path
    from vast.models.towers import tokenizer_source

    cfg = {"text_encoder_config": "", "text_encoder_weights": "pretrained_weights/bert/bert-base-uncased",
           "multimodal_encoder_type": "bert_base_uncased"}
    assert tokenizer_source(cfg) == "pretrained_weights/bert/bert-base-uncased"
    assert tokenizer_source({**cfg, "text_encoder_config": minilm_path()}) == minilm_path()  # holds vocab.txt
    (tmp_path / "config.json").write_text("{}")  # a config without a vocabulary does not
    assert tokenizer_source({**cfg, "text_encoder_config": str(tmp_path)}) == cfg["text_encoder_weights"]
