"""The labeling pipeline: a folder of videos -> labeled clips in shards, by either executor.

One definition (`label_stages`): decode -> subtitles (Whisper) -> vision captions -> audio captions
-> omni caption -> shard media; `label_corpus` plans the run (`plan.py`), hands the batches of the
shards not yet complete to the executor, writes each shard once all its clips are back, and
finishes with `shards.json`, `annotations.json` and `report.json` (`output.py`).

Command line (what `scripts/vast/label_corpus.sh` runs):
    python -m vast.labeling.pipeline VIDEO_DIR OUTPUT_DIR [--config FILE] [--key value ...]
Exit status: 0 when every file was labeled, 3 when some were skipped (listed in report.json and
printed), 2 for a mistake in the input or settings (one line on stderr).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm

from vast.config import parse_options, resolve_path
from vast.errors import ConfigError, VastError
from vast.labeling.asr import WhisperSubtitles
from vast.labeling.captioners import VastCaptioner
from vast.labeling.clips import ClipDecoder
from vast.labeling.config import LabelConfig, load_label_config
from vast.labeling.executors import make_executor, pending_batches
from vast.labeling.llm import LlmConfig, create_omni_stage
from vast.labeling.output import ShardMedia, ShardWriter, report_table
from vast.labeling.plan import make_plan
from vast.labeling.stages import Stage

logger = logging.getLogger(__name__)

SOME_SKIPPED_EXIT = 3
USER_ERROR_EXIT = 2


def check_models(config: LabelConfig) -> None:
    """Stop before any work when a configured model file is missing, saying where it goes."""
    for captioner in config.captioner_configs():
        path = resolve_path(captioner.model)
        if not path.exists():
            kind = "vision" if captioner.group == "tv" else "audio"
            raise ConfigError(f"{kind} captioner not found: {captioner.model}; put a VAST captioner there (a run "
                              f"folder with log/hps.json and ckpt/, e.g. the released {kind}_captioner, see "
                              f"pretrained_weights/README.md) or pass --{kind}_captioner PATH")
    if config.asr_model and not resolve_path(config.asr_model).exists():
        raise ConfigError(f"ASR model not found: {config.asr_model}; put a Whisper model there (see "
                          "pretrained_weights/README.md) or leave --asr_model empty for the bundled tiny.en")


def omni_stage(config: LabelConfig) -> Stage:
    """The template fusion without `llm`; the LLM (falling back to the template per clip) with it."""
    return create_omni_stage(LlmConfig(model=config.llm, prompt_file=config.llm_prompt,
                                       batch_size=config.llm_batch_size, max_new_tokens=config.llm_max_new_tokens,
                                       threads=config.threads))


def label_stages(config: LabelConfig) -> list[Stage]:
    """The pipeline: every stage with its own config; the executor decides where each runs."""
    return [ClipDecoder(config.decode_config()), WhisperSubtitles(config.asr_config()),
            *[VastCaptioner(c) for c in config.captioner_configs()], omni_stage(config),
            ShardMedia(config.media, config.frame_size)]


def label_corpus(video_dir, out_dir, config: LabelConfig) -> dict:
    """Label every video under `video_dir` into shards under `out_dir`; returns the report."""
    started = time.perf_counter()
    video_dir, out_dir = Path(video_dir), Path(out_dir)
    check_models(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out_dir)
    has_complete = any(writer.progress_path(0).parent.glob("shard-*.json"))
    plan = make_plan(video_dir, config, out_dir, completed=has_complete)
    done = [k for k in range(plan.num_shards) if writer.complete(k)]
    batches = pending_batches(plan, done, config.batch_size)
    if done:
        logger.info("%d of %d shards are complete from an earlier run; labeling the other %d",
                    len(done), plan.num_shards, plan.num_shards - len(done))
    expected = {}
    for batch in batches:
        expected[batch["shard"]] = expected.get(batch["shard"], 0) + 1
    arrived: dict[int, list[dict]] = {}
    executor = make_executor(config.engine, config.workers, config.threads, config.ray_address)
    clips = sum(len(b["records"]) for b in batches)
    with tqdm(total=clips, unit="clip", disable=not config.progress, dynamic_ncols=True) as bar:
        for batch in executor.run(label_stages(config), batches):
            bar.update(len(batch["records"]))
            parts = arrived.setdefault(batch["shard"], [])
            parts.append(batch)
            if len(parts) == expected[batch["shard"]]:  # every clip of the shard is back: write it
                parts = sorted(arrived.pop(batch["shard"]), key=lambda b: b["index"])
                seconds: dict[str, float] = {}
                for part in parts:
                    for stage, value in part["seconds"].items():
                        seconds[stage] = seconds.get(stage, 0.0) + value
                writer.write(batch["shard"], [r for part in parts for r in part["records"]], seconds)
    wall = time.perf_counter() - started
    info = {"media": config.media, **({"frames": config.frames, "frame_size": config.frame_size}
                                      if config.media == "presampled" else {}), "labeling": config.label_settings()}
    run = {"engine": config.engine, "wall_seconds": round(wall, 2), "clips_this_run": clips,
           "clips_per_second": round(clips / wall, 3) if wall else 0.0}
    return writer.finish(plan.num_shards, plan.skipped, info, run)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    positional = []
    while argv and not argv[0].startswith("--"):
        positional.append(argv.pop(0))
    try:
        if len(positional) != 2:
            raise ConfigError("usage: label_corpus.sh VIDEO_DIR OUTPUT_DIR [--key value ...] "
                              "(settings: config/vast/captioner_cfg/label-corpus.json)")
        overrides = parse_options(argv)
        settings = overrides.pop("config", None)  # another settings file instead of label-corpus.json
        if settings is not None and len(settings) != 1:
            raise ConfigError("--config: give one labeling settings file")
        config = load_label_config(overrides, settings[0] if settings else None)
        report = label_corpus(positional[0], positional[1], config)
    except VastError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    print(report_table(report))
    print(f"shards: {Path(positional[1]) / 'shards.json'}  report: {Path(positional[1]) / 'report.json'}")
    return SOME_SKIPPED_EXIT if report["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
