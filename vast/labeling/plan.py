"""The plan of a labeling run: which sources, which clips, and which output shard each clip goes to.

A run's work is split into output shards by a fixed assignment: sources sorted by path, cut into
clips (`ClipSplitter`), clips numbered in that order and shard k holding clips k*S .. (k+1)*S - 1
(S = `shard_size`). The plan is saved as `plan.json` in the output folder, so a rerun finds the
same shard for every clip (a shard is written whole or redone, and a clip never lands twice), and
it records the settings that change labels: a rerun with other settings or other sources into a
folder that already holds shards stops with a message instead of mixing two kinds of labels.

Files that are not clips are part of the plan too: a file whose extension is not a video's, a file
that cannot be opened or a clip shorter than `min_clip_seconds` is listed under `skipped` with its
reason, never dropped silently.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vast.data.sources import VIDEO_EXTENSIONS
from vast.errors import ConfigError
from vast.labeling.clips import ClipSplitter
from vast.labeling.config import LabelConfig

PLAN_NAME = "plan.json"
PLAN_VERSION = 1
SPLIT_BATCH = 16  # sources per splitting task


def skip_reason(error: str) -> str:
    """A short reason for the report's table, from a stage's error message."""
    text = error.lower()
    for needle, reason in (("0 bytes", "empty file"), ("not a video file", "not a video file"),
                           ("no audio stream", "no audio stream"), ("too short", "too short"),
                           ("no video stream", "no video stream"), ("file not found", "file not found")):
        if needle in text:
            return reason
    return "undecodable" if ("decod" in text or "truncated" in text or "cannot" in text or "media" in text) \
        else "failed"


def find_sources(video_dir: Path) -> tuple[list[dict], list[dict]]:
    """Every file under `video_dir` (hidden ones aside), sorted by path: (video sources, other files).
    A source's id is its path inside `video_dir` without the extension (with it where two files
    would otherwise share an id)."""
    if not video_dir.is_dir():
        raise ConfigError(f"video folder not found: {video_dir}")
    files = sorted(p for p in video_dir.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(video_dir).parts))
    videos, others = [], []
    for path in files:
        relative = path.relative_to(video_dir).as_posix()
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            stat = path.stat()
            videos.append({"source": str(path), "path": relative, "bytes": stat.st_size,
                           "mtime_ns": stat.st_mtime_ns})
        else:
            others.append({"clip_id": relative, "source": str(path), "reason": "not a video file",
                           "error": f"{path}: not a video file (extension {path.suffix or 'none'})"})
    stems = [v["path"].rsplit(".", 1)[0] for v in videos]
    for video, stem in zip(videos, stems):
        video["source_id"] = stem if stems.count(stem) == 1 else video["path"]
    return videos, others


@dataclass
class Plan:
    """Clips in shard order, what was skipped before labeling, and the settings the plan is for."""

    clips: list[dict]  # {"clip_id", "source", "start", "end", "duration", "shard"}
    skipped: list[dict]  # {"clip_id", "source", "reason", "error"}
    shard_size: int
    fingerprint: dict = field(default_factory=dict)

    @property
    def num_shards(self) -> int:
        return max((c["shard"] for c in self.clips), default=-1) + 1

    def shard_clips(self, shard: int) -> list[dict]:
        return [dict(c) for c in self.clips[shard * self.shard_size:(shard + 1) * self.shard_size]]

    def batches(self, shard: int, batch_size: int) -> list[list[dict]]:
        """The clips of one shard in fixed batches: every executor hands each stage the same batches,
        so sampled captions (seeded per batch) do not depend on the executor."""
        clips = self.shard_clips(shard)
        return [clips[i:i + batch_size] for i in range(0, len(clips), batch_size)]

    def save(self, out_dir: Path) -> None:
        tmp = out_dir / (PLAN_NAME + ".tmp")
        tmp.write_text(json.dumps({"version": PLAN_VERSION, "fingerprint": self.fingerprint,
                                   "shard_size": self.shard_size, "clips": self.clips, "skipped": self.skipped},
                                  indent=0, ensure_ascii=False), encoding="utf-8")
        tmp.replace(out_dir / PLAN_NAME)

    @classmethod
    def load(cls, out_dir: Path) -> Plan | None:
        path = out_dir / PLAN_NAME
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != PLAN_VERSION:
            return None
        return cls(data["clips"], data["skipped"], data["shard_size"], data["fingerprint"])


def fingerprint(video_dir: Path, sources: list[dict], others: list[dict], config: LabelConfig) -> dict:
    """What a plan (and the labels made from it) depend on: the files and the labeling settings."""
    return {"video_dir": str(video_dir.resolve()),
            "files": [[s["path"], s["bytes"], s["mtime_ns"]] for s in sources] + [[o["clip_id"]] for o in others],
            "settings": config.label_settings()}


def _split(job: tuple[ClipSplitter, list[dict]]) -> list[dict]:
    splitter, batch = job
    return splitter([dict(record) for record in batch])


def make_plan(video_dir: Path, config: LabelConfig, out_dir: Path, completed: bool) -> Plan:
    """The saved plan when it is for these files and settings; else a new one (sources split by
    `workers` threads: probing and scene detection run in ffmpeg/PyAV, outside the GIL). `completed`
    says whether the output folder already holds finished shards, which a new plan would orphan."""
    sources, others = find_sources(video_dir)
    wanted = fingerprint(video_dir, sources, others, config)
    saved = Plan.load(out_dir)
    if saved is not None and saved.fingerprint == wanted:
        return saved
    if saved is not None and completed:
        raise ConfigError(f"{out_dir} holds shards labeled from {_difference(saved.fingerprint, wanted)}; "
                          "label into a new output folder, or delete this one to start over")
    splitter = ClipSplitter(config.split_config())
    jobs = [(splitter, sources[i:i + SPLIT_BATCH]) for i in range(0, len(sources), SPLIT_BATCH)]
    with ThreadPoolExecutor(max(1, min(config.workers, os.cpu_count() or 1))) as pool:
        split = [clip for part in pool.map(_split, jobs) for clip in part]
    clips, skipped = [], list(others)
    for clip in split:
        if clip.get("error"):
            skipped.append({"clip_id": clip["clip_id"], "source": clip["source"],
                            "reason": skip_reason(clip["error"]), "error": clip["error"]})
        elif clip["duration"] < config.min_clip_seconds:
            skipped.append({"clip_id": clip["clip_id"], "source": clip["source"], "reason": "too short",
                            "error": f"{clip['source']}: too short ({clip['duration']:.2f} s < min_clip_seconds "
                                     f"{config.min_clip_seconds})"})
        else:
            clips.append({**clip, "shard": len(clips) // config.shard_size})
    plan = Plan(clips, skipped, config.shard_size, wanted)
    plan.save(out_dir)
    return plan


def _difference(old: dict, new: dict) -> str:
    if old["video_dir"] != new["video_dir"]:
        return f"another folder ({old['video_dir']})"
    if old["files"] != new["files"]:
        return "other files (the video folder changed since)"
    changed = sorted(k for k in set(old["settings"]) | set(new["settings"])
                     if old["settings"].get(k) != new["settings"].get(k))
    return "other settings (" + ", ".join(f"{k} was {old['settings'].get(k)!r}, now {new['settings'].get(k)!r}"
                                          for k in changed) + ")"
