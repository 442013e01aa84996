"""The original VAST release's recipes as a table of values (its 29 config files and six launchers).

Each config row: the dataset folder, the data-entry name, the task, the media folder and format, and
per split (annotation file, frames, audio clips, [epochs,] batch size). `LAUNCHED` holds what the
original launch scripts (finetune_ret.sh, finetune_cap.sh, finetune_qa.sh, pretrain_vast.sh,
vision_captioner.sh, audio_captioner.sh) pass on top of the file; what actually ran is the file with
those options applied (`effective`). `original_config` writes a row back in the original's layout,
so tests can load the original files without keeping copies of them.
"""

from __future__ import annotations

# name: row. train / test: (annotation file, vision_sample_num, audio_sample_num, [epoch,] batch_size);
# None = the key is not in the entry.
CONFIGS = {
    "retrieval-msrvtt": dict(ds="msrvtt", name="msrvtt_ret", task="ret%tvas", media="videos", audio=True,
                             transforms="crop_flip", train=("descs_ret_train.json", 8, 1, 3.6, 64),
                             test=("descs_ret_test.json", 16, 1, 64)),
    "retrieval-vatex": dict(ds="vatex", name="vatex_ret", task="ret%tvas", media="videos", audio=True,
                            train=("descs_ret_train.json", 8, 1, 2.5, 64), test=("descs_ret_test.json", 16, 1, 64)),
    "retrieval-youcook": dict(ds="youcook", name="youcook_ret", task="ret%tvas", media="videos", audio=True,
                              train=("descs_cap_train.json", 8, 1, 30, 64), test=("descs_cap_test.json", 16, 1, 64)),
    # the original validates on its training file (a defect; the project's recipe says so in its _note)
    "retrieval-valor32k": dict(ds="valor32k", name="valor32k_cap", task="ret%tva", media="videos", audio=True,
                               train=("descs_cap_train.json", 8, 1, 30, 64), test=("descs_cap_train.json", 8, 1, 64)),
    "retrieval-didemo": dict(ds="didemo", name="didemo_ret", task="ret%tva", media="videos", audio=True,
                             train=("descs_ret_train.json", 8, 2, 40, 64), test=("descs_ret_test.json", 32, 2, 64),
                             model={"max_caption_len": 70}),
    "retrieval-activitynet": dict(ds="activitynet", name="activitynet_ret", task="ret%tva", media="videos", audio=True,
                                  train=("descs_ret_train.json", 8, 2, 20, 64),
                                  test=("descs_ret_test.json", 32, 2, 64), model={"max_caption_len": 70}),
    "retrieval-lsmdc": dict(ds="lsmdc", name="lsmdc_ret", task="ret%tva", media="videos", audio=True,
                            train=("descs_ret_trainval.json", 8, 1, 5, 64), test=("descs_ret_test.json", 32, 1, 64)),
    "retrieval-clothov2": dict(ds="clothov2", name="clothov2_ret", task="ret%ta", audio=True,
                               train=("descs_cap_trainval.json", None, 3, 10, 64),
                               test=("descs_cap_test.json", None, 3, 64)),
    "retrieval-audiocaps": dict(ds="audiocaps", name="audiocaps_ret", task="ret%ta", audio=True,
                                train=("descs_ret_trainval.json", None, 1, 10, 64),
                                test=("descs_ret_test.json", None, 1, 64)),
    # the released file writes the task "'ret%tv" (a stray quote; see DEFECTIVE)
    "retrieval-mscoco": dict(ds="mscoco", name="mscoco_ret", task="ret%tv", media="images", format="image_rawimage",
                             train=("descs_cap_train.json", None, None, 5, 256), test=("descs_cap_test.json", None, None, 128)),
    "retrieval-flickr": dict(ds="flickr", name="flickr_ret", task="ret%tv", media="images", format="image_rawimage",
                             train=("descs_ret_trainval.json", None, None, 5, 256),
                             test=("descs_ret_test.json", None, None, 128)),
    "caption-msrvtt": dict(ds="msrvtt", name="msrvtt_cap", task="cap%tvas", media="videos", audio=True,
                           transforms="crop_flip", train=("descs_cap_train.json", 8, 1, 5, 64),
                           test=("descs_cap_test.json", 16, 1, 64), annfile=True),
    "caption-vatex": dict(ds="vatex", name="vatex_cap", task="cap%tvas", media="videos", audio=True,
                          train=("descs_cap_trainval.json", 8, 1, 10, 64), test=("descs_cap_test.json", 20, 1, 64),
                          annfile=True),
    "caption-youcook": dict(ds="youcook", name="youcook_cap", task="cap%tvas", media="videos", audio=True,
                            train=("descs_cap_train.json", 8, 1, 30, 64), test=("descs_cap_test.json", 16, 1, 64),
                            annfile=True),
    "caption-valor32k": dict(ds="valor32k", name="valor32k_cap", task="cap%tva", media="videos", audio=True,
                             train=("descs_cap_train.json", 8, 1, 30, 64), test=("descs_cap_test.json", 8, 1, 64),
                             annfile=True),
    "caption-tv": dict(ds="tv", name="tv_cap", task="cap%tv", media="frames_fps3", format="video_frame",
                       train=("descs_cap_train.json", 8, None, 20, 64), test=("descs_cap_test.json", 8, None, 64),
                       annfile=True),
    "caption-msvd": dict(ds="msvd", name="msvd_cap", task="cap%tv", media="videos",
                         train=("descs_cap_train.json", 8, None, 2.5, 64), test=("descs_cap_test.json", 8, None, 64),
                         annfile=True),
    "caption-mscoco": dict(ds="mscoco", name="mscoco_cap", task="cap%tv", media="images", format="image_rawimage",
                           train=("descs_cap_train.json", None, None, 5, 64),
                           test=("descs_cap_test.json", None, None, 128), annfile=True),
    "caption-clothov2": dict(ds="clothov2", name="clothov2_cap", task="cap%ta", audio=True,
                             train=("descs_cap_trainval.json", None, 3, 10, 64),
                             test=("descs_cap_test.json", None, 3, 64), annfile=True),
    "caption-audiocaps": dict(ds="audiocaps", name="audiocaps_cap", task="cap%ta", audio=True,
                              train=("descs_cap_trainval.json", None, 1, 10, 64),
                              test=("descs_cap_test.json", None, 1, 64), annfile=True),
    "VQA-msrvtt": dict(ds="msrvtt", name="msrvtt_qa", task="qa%tvas", media="videos", audio=True, transforms="crop_flip",
                       train=("descs_qa_trainval.json", 8, 1, 4.5, 64), test=("descs_qa_test.json", 8, 1, 8)),
    "VQA-msvd": dict(ds="msvd", name="msvd_qa", task="qa%tv", media="videos",
                     train=("descs_qa_trainval.json", 8, None, 10, 64), test=("descs_qa_test.json", 8, None, 8)),
    "VQA-tgif": dict(ds="tgif", name="tgif_qa", task="qa%tv", media="videos",
                     train=("descs_qa_train.json", 4, None, 10, 64), test=("descs_qa_test.json", 4, None, 8)),
    "VQA-activitynet": dict(ds="activitynet", name="activitynet_qa", task="qa%tva", media="videos", audio=True,
                            train=("descs_qa_train.json", 8, 2, 10, 64), test=("descs_qa_test.json", 16, 2, 8)),
    "VQA-music": dict(ds="music", name="music_qa", task="qa%tva", media="videos", audio=True,
                      train=("descs_qa_train.json", 8, 2, 4.5, 64), test=("descs_qa_test.json", 8, 2, 8)),
    # its data entries hold max_caption_len 30 (the question length), its test entry make_submission
    "VQA-vqav2": dict(ds="mscoco", name="vqav2_trainval", test_name="vqav2_test", task="qa%tv", media="images",
                      format="image_rawimage", train=("descs_qa_train.json", None, None, 20, 128),
                      test=("descs_qa_test.json", None, None, 64),
                      entry={"max_caption_len": 30}, test_entry={"make_submission": True}),
    "caption-generation-vision": dict(ds="yourdata", name="yourdata", task="cap%tv", media="videos",
                                      test=("meta.json", 8, None, 64), run={"mode": "testing"}),
    "caption-generation-audio": dict(ds="yourdata", name="yourdata", task="cap%ta", audio=True,
                                     test=("meta.json", None, 3, 64), run={"mode": "testing"}),
}

# What each launcher passes (besides --config, --pretrain_dir and --output_dir).
_RET = {"learning_rate": 2e-5, "checkpointing": True}
LAUNCHED = {
    "retrieval-msrvtt": {**_RET, "first_eval": True, "save_best": True},
    "retrieval-vatex": {**_RET, "save_best": True},
    "retrieval-valor32k": dict(_RET),
    "retrieval-lsmdc": {**_RET, "first_eval": False, "save_best": True},
    "retrieval-youcook": {**_RET, "learning_rate": 3e-5, "save_best": True},
    "retrieval-didemo": {**_RET, "save_best": True},
    "retrieval-activitynet": {**_RET, "save_best": True},
    "retrieval-clothov2": dict(_RET),
    "retrieval-audiocaps": dict(_RET),
    "retrieval-mscoco": {**_RET, "learning_rate": 1e-5, "first_eval": True, "save_best": True, "vision_resolution": 384},
    "retrieval-flickr": {**_RET, "learning_rate": 1e-5, "first_eval": True, "save_best": True, "vision_resolution": 384},
    "caption-msrvtt": {**_RET, "train_batch_size": 128, "train_epoch": 10, "save_best": True, "beam_size": 3,
                       "first_eval": False},
    "caption-msvd": {**_RET, "learning_rate": 1e-5, "save_best": True},
    "caption-youcook": {**_RET, "learning_rate": 3e-5, "save_best": True},
    "caption-valor32k": dict(_RET),
    "caption-tv": {**_RET, "learning_rate": 3e-5, "train_epoch": 40, "save_best": True},
    "caption-vatex": {**_RET, "save_best": True},
    "caption-clothov2": {**_RET, "save_best": True},
    "caption-audiocaps": {**_RET, "save_best": True},
    "caption-mscoco": {"learning_rate": 1e-5, "vision_resolution": 480, "checkpointing": False, "save_best": True},
    "VQA-msrvtt": {**_RET, "beam_size": 1, "first_eval": False, "save_best": True, "valid_freq": 1},
    "VQA-msvd": {**_RET, "learning_rate": 1e-5, "first_eval": False, "save_best": True},
    "VQA-tgif": {**_RET, "first_eval": False, "save_best": True},
    "VQA-activitynet": {**_RET, "save_best": True, "first_eval": False},
    "VQA-music": {**_RET, "first_eval": False},
    "VQA-vqav2": {"learning_rate": 2e-5, "first_eval": False, "vision_resolution": 384, "valid_freq": 1},
    "caption-generation-vision": {"test_batch_size": 64, "test_vision_sample_num": 8, "generate_nums": 3,
                                  "captioner_mode": True},
    "caption-generation-audio": {"test_batch_size": 128, "generate_nums": 3, "captioner_mode": True},
}

# The original defaults that the launched values fall back to (default_run_cfg / default_model_cfg).
ORIGINAL_DEFAULTS = {"learning_rate": 1e-4, "checkpointing": False, "first_eval": True, "save_best": False,
                     "valid_freq": 10, "vision_resolution": 224, "beam_size": 3, "generate_nums": 1,
                     "captioner_mode": False, "max_caption_len": 40}

# pretrain_vast.json: run_cfg learning_rate 5e-5 (pretrain_vast.sh adds checkpointing true).
# Corpus: (folder, name, task, vision folder or None, vision_format, vision_sample_num, audio_sample_num,
# steps, batch_size, n_workers).
PRETRAIN_LEARNING_RATE = 5e-5
PRETRAIN_CORPORA = [
    ("vast27m", "vast27m", "ret%tvas%tvs%tv%ta_cap%tvas%tvs%tv%ta", "videos", "video_rawvideo", 1, 1, 60000, 1024, 8),
    ("valor1m", "valor1m", "ret%tva%tv%ta_cap%tva%tv%ta", "videos", "video_rawvideo", 1, 1, 25000, 1024, 4),
    ("cc4m", "cc4m", "ret%tv_cap%tv", "images", "image_rawimage", None, None, 55000, 2048, 2),
    ("cc12m", "cc12m", "ret%tv_cap%tv", "images", "image_rawimage", None, None, 20000, 2048, 4),
    ("laion2b", "laion2b", "ret%tv_cap%tv", "images", "image_rawimage", None, None, 55000, 2048, 4),
    ("AudioSetSL", "audioset-SL", "ret%ta_cap%ta", None, None, None, 1, 7500, 1024, 4),
    ("FreeSound", "freesound", "ret%ta_cap%ta", None, None, None, 2, 7500, 1024, 4),
]


def _entry(row: dict, split: str) -> dict:
    """One data entry of a row in the original's layout."""
    training = split == "train"
    file, frames, clips, *rest = row[split]
    ds = row["ds"]
    entry = {"type": "annoindexed", "training": training,
             "name": row.get("test_name", row["name"]) if not training else row["name"],
             "txt": f"datasets/annotations/{ds}/{file}"}
    if row.get("media"):
        entry["vision"] = f"datasets/srcdata/{ds}/{row['media']}"
        entry["vision_format"] = row.get("format", "video_rawvideo")
    if row.get("audio"):
        entry["audio"] = f"datasets/srcdata/{ds}/audios"
    if row.get("transforms"):
        entry["vision_transforms"] = row["transforms"]
    if frames is not None:
        entry["vision_sample_num"] = frames
    if clips is not None:
        entry["audio_sample_num"] = clips
    entry["task"] = row["task"]
    if training:
        entry["epoch"] = rest[0]
    elif row.get("annfile"):
        entry["annfile"] = f"datasets/annotations/{ds}/caption_annotation.json"
    entry.update({"n_workers": 8, "batch_size": rest[-1]})
    entry.update(row.get("entry", {}))
    if not training:
        entry.update(row.get("test_entry", {}))
    return entry


def original_config(name: str) -> dict:
    """A recipe as the original release's file holds it (the defaults files by their original path)."""
    row = CONFIGS[name]
    return {
        "run_cfg": {"default": "./config/vast/default_run_cfg.json", **row.get("run", {})},
        "model_cfg": {"default": "./config/vast/default_model_cfg.json", **row.get("model", {})},
        "data_cfg": {"train": [_entry(row, "train")] if "train" in row else {}, "val": [_entry(row, "test")]},
    }


def effective(name: str) -> dict:
    """The values the original actually ran with: the file, then its launcher's options."""
    row, launched = CONFIGS[name], LAUNCHED[name]
    values = {key: launched.get(key, row.get("model", {}).get(key, ORIGINAL_DEFAULTS[key]))
              for key in ORIGINAL_DEFAULTS}
    values["task"] = row["task"]
    for split, prefix in (("train", "train"), ("test", "test")):
        if split not in row:
            continue
        entry = _entry(row, split)
        for key in ("txt", "vision", "audio", "vision_format", "vision_sample_num", "audio_sample_num",
                    "batch_size", "epoch", "annfile", "make_submission", "max_caption_len"):
            values[f"{prefix}.{key}"] = entry.get(key)
        values[f"{prefix}.vision_sample_num"] = entry.get("vision_sample_num", 1 if row.get("media") else None)
        values[f"{prefix}.audio_sample_num"] = entry.get("audio_sample_num", 1 if row.get("audio") else None)
        for option in ("batch_size", "epoch", "vision_sample_num", "audio_sample_num"):
            if f"{prefix}_{option}" in launched:
                values[f"{prefix}.{option}"] = launched[f"{prefix}_{option}"]
    return values
