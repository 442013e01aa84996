"""Every config key VAST reads: its kind, its one default and its valid values (the schema).

This module is the only place a default is written. `config/vast/default_{run,model}_cfg.json` are
generated from it (`python -m vast.config --write-defaults`; a test keeps them equal), so original config
files that name them as `default` load as before, and an installed package needs no file from the
source tree. The defaults are the original VAST release's values; keys the original did not have are
marked "new" with what they switch on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vast.config.values import FlagOrText

REQUIRED = object()  # a data-entry key without a default


@dataclass(frozen=True)
class KeySpec:
    kind: type
    default: Any
    choices: tuple | None = None


def _keys(*rows) -> dict[str, KeySpec]:
    return {name: KeySpec(kind, default, choices) for name, kind, default, *rest in rows
            for choices in [rest[0] if rest else None]}


RUN_KEYS = _keys(
    ("checkpoint", str, ""),  # one model file to start from
    ("output_dir", str, ""),  # empty: output/<config file stem>
    ("gradient_accumulation_steps", int, 1),
    ("contrastive_negatives", str, "global", ("global", "micro_batch")),  # new: under accumulation
    ("clip_lr", float, 5e-7),  # the vision tower's learning rate
    ("optim", str, "adamw", ("adamw", "adam")),
    ("learning_rate", float, 1e-4),
    ("betas", list, [0.9, 0.98]),
    ("adam_epsilon", float, 1e-8),  # new: torch's default, which the original used
    ("weight_decay", float, 0.01),
    ("grad_norm", float, 2.0),
    ("warmup_ratio", float, 0.1),
    ("resume", FlagOrText, False),  # false, true (newest checkpoint of output_dir) or a path
    ("ckpt_steps", int, 0),  # new: 0 = checkpoint at evaluations only
    ("seed", int, 50),
    ("fp16", bool, True),
    ("bf16", bool, False),
    ("zero_shot", bool, False),
    ("scheduler", str, "warmup_linear", ("warmup_linear", "warmup_cosine", "constant")),
    ("new_lr", float, 0.0),
    ("new_params_name", list, []),
    ("valid_freq", int, 10),
    ("dataset_mix_type", str, "random", ("random", "round_robin")),  # how steps pick a corpus
    ("remove_before_ckpt", bool, True),
    ("first_eval", bool, True),
    ("pretrain_dir", str, ""),
    ("num_train_steps", int, 0),
    ("save_best", bool, False),
    ("pin_mem", bool, True),
    ("vision_resolution", int, 224),
    ("use_ddp", bool, True),
    ("deepspeed", FlagOrText, False),  # new: false, a ZeRO stage or a DeepSpeed JSON
    ("tensorboard", bool, False),  # new
    ("mode", str, "training", ("training", "testing", "inspect", "check_data")),
    ("log_steps", int, 100),
)

MODEL_KEYS = _keys(
    ("itm_ratio", float, 0.1),
    ("contra_ratio", float, 1.0),
    ("frozen_vision", bool, False),
    ("frozen_audio", bool, False),
    ("checkpointing", bool, True),
    ("max_caption_len", int, 40),
    ("max_omni_caption_len", int, 70),
    ("max_subtitle_len", int, 70),
    ("contra_dim", int, 512),
    ("inherit_keys", list, ["vision_encoder_type", "audio_encoder_type", "audio_melbins", "audio_target_length"]),
    ("frame_embedding_type", str, "adaptive"),
    ("vision_resolution", int, 224),
    ("vision_encoder_type", str, "evaclip01_giant"),
    ("audio_encoder_type", str, "beats"),
    ("multimodal_encoder_type", str, "bert_base_uncased"),
    ("audio_melbins", int, 64),
    ("audio_target_length", int, 1024),
    ("beam_size", int, 3),
    ("captioner_mode", bool, False),
    ("generate_nums", int, 1),
    ("ret_bidirection_evaluation", bool, False),
    ("itm_rerank_num", int, 50),
    ("vision_encoder_weights", str, "pretrained_weights/clip/EVA01_CLIP_g_14_psz14_s11B.pt"),
    ("audio_encoder_weights", str, "pretrained_weights/beats/BEATs_iter3_plus_AS2M.pt"),
    ("text_encoder_weights", str, "pretrained_weights/bert/bert-base-uncased"),
    ("contra_label_smoothing", float, 0.1),
    ("omni_contra_groups", list, ["va", "vs", "vas"]),
    ("mask_subtitle_padding", bool, False),
    ("vision_encoder_config", str, ""),
    ("audio_encoder_config", str, ""),
    ("text_encoder_config", str, ""),
    ("itm_random_negative_ratio", float, 0.0),
    ("itm_subtitle_swap_ratio", float, 0.0),
    ("caption_ratio", float, 1.0),
    ("qa_ratio", float, 1.0),
    ("caption_mask_prob", float, 0.6),
    ("qa_mask_prob", float, 0.99),
    ("max_question_len", int, 30),
    ("max_answer_len", int, 10),
    ("beam_size_qa", int, 1),
    ("length_penalty", float, 0.6),
    ("sample_top_k", int, 5),
    ("sample_temperature", float, 1.0),
    ("generation_cache", bool, True),
)

# model_cfg keys a run derives from its data entries (frame / clip embedding table sizes), with the
# value a model built without data entries gets.
DERIVED_MODEL_KEYS = {"max_vision_sample_num": 1, "max_audio_sample_num": 1}

VISION_FORMATS = ("video_rawvideo", "video_frame", "image_rawimage")

# Keys of one data entry. `datatype` is the older name of `vision_format`, `allow_missing_audio` of
# `audio_missing: zeros`.
DATA_KEYS = _keys(
    ("type", str, "annoindexed", ("annoindexed", "shards")),
    ("training", bool, None),
    ("name", str, REQUIRED),
    ("txt", str, ""),  # required for annoindexed
    ("shards", list, []),  # type shards: a brace pattern, a list of URLs, or a shards.json
    ("shuffle_buffer", int, 1000),
    ("resampled", bool, False),
    ("vision", str, ""),
    ("audio", str, ""),
    ("vision_format", str, "video_rawvideo", VISION_FORMATS),
    ("datatype", str, "", VISION_FORMATS),
    ("vision_sample_num", int, 1),
    ("audio_sample_num", int, 1),
    ("vision_transforms", str, "none", ("none", "crop_flip")),
    ("task", str, REQUIRED),
    ("epoch", float, None),
    ("steps", int, None),
    ("batch_size", int, REQUIRED),
    ("n_workers", int, 0),
    ("annfile", str, ""),
    ("make_submission", bool, False),  # QA: also write the answers as a VQAv2 test-dev submission
    ("max_caption_len", int, None),  # this entry's text length: questions for QA, else captions
    ("audio_missing", str, "error", ("error", "zeros")),
    ("allow_missing_audio", bool, False),
)

SCHEMAS = {"run_cfg": RUN_KEYS, "model_cfg": MODEL_KEYS}

# Options and model_cfg keys the original VAST accepted that this implementation does not use (there
# is one model and one evaluation). They are accepted, so old configs and launch scripts run, and a
# warning says they have no effect.
INERT_OPTIONS = frozenset(
    """amp clip_lr_text dropout opt_model llm_model train_id test_id max_generation_len max_length
    min_length max_output_txt_len max_text_tokens scst_finetuning use_proposal_conv trainer_type
    concatenated_nums loss_type huggingface_trainer prompt model_cfg_file llm_type dual_softmax
    pool_video use_flash_attn qformer_question frozen_llm qformer_text_input evaluate_ret_text
    pool_vision vision_perceiver_query_num perceiver_mode vision_cut_frames
    model_type evaluation_type""".split()
)

# Command-line options that change data entries: option -> (split, entry key). "both" = train and val.
DATA_OVERRIDES = {
    "train_epoch": ("train", "epoch"),
    "train_steps": ("train", "steps"),
    "train_vision_sample_num": ("train", "vision_sample_num"),
    "train_audio_sample_num": ("train", "audio_sample_num"),
    "train_batch_size": ("train", "batch_size"),
    "train_task": ("train", "task"),
    "test_batch_size": ("val", "batch_size"),
    "test_vision_sample_num": ("val", "vision_sample_num"),
    "test_audio_sample_num": ("val", "audio_sample_num"),
    "test_task": ("val", "task"),
    "vision_transforms": ("both", "vision_transforms"),
}


def defaults(block: str) -> dict[str, Any]:
    """A block's defaults as the JSON defaults file holds them."""
    return {key: spec.default for key, spec in SCHEMAS[block].items()}


def write_defaults_files(folder: Path) -> list[Path]:
    written = []
    for block in SCHEMAS:
        path = folder / f"default_{block}.json"
        path.write_text(json.dumps(defaults(block), indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written

