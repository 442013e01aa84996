"""The output of a labeling run: shards in the format of `vast.data.shards`, the VAST-27M-style
annotation file, and the report.

Two steps, so the heavy part runs where the models run and the driver only writes files:
- `ShardMedia` (a stage, last in the pipeline) turns each labeled clip into its shard members:
  the file's own bytes when the clip is a whole file (`media: as_is`), the clip's window cut by
  ffmpeg (H.264/AAC) when it is part of a longer video, or the decoded frames as JPEG and the audio
  as 16 kHz WAV (`media: presampled`); it drops the decoded arrays.
- `ShardWriter` (on the driver) writes shard k once all its clips are back: `shard-<k>.tar` through
  a temporary name, then `progress/shard-<k>.json` (its clips, labels, skipped clips and stage
  times). The progress file is the mark of a complete shard: a rerun skips shards that have one and
  redoes the others, so a killed run loses at most the shards in flight and a clip never lands twice.
- `finish()` gathers the progress files into `shards.json` (readable at once by a `type: shards`
  data entry), `annotations.json` (VAST-27M's `clip_id`, `vision_cap`, `audio_cap`, `subtitle`,
  `vast_cap`, plus where each clip comes from) and `report.json`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from vast.data.shards import FORMAT_VERSION, FRAME_MEMBER, INDEX_NAME, SHARD_NAME, ShardFile, ShardSample, \
    jpeg_bytes, shard_key, wav_bytes
from vast.errors import MediaError
from vast.labeling.plan import skip_reason
from vast.labeling.stages import Resources, Stage

PROGRESS_DIR = "progress"
ANNOTATIONS_NAME = "annotations.json"
REPORT_NAME = "report.json"
LABEL_FIELDS = ("clip_id", "source", "start", "end", "duration", "vision_cap", "audio_cap", "subtitle",
                "subtitle_segments", "language", "vast_cap", "omni_source")
DECODED_FIELDS = ("frames", "waveform")


def cut_window(source: str, start: float, end: float) -> bytes:
    """The [start, end) seconds of a video as a standalone H.264/AAC mp4 (re-encoded, so the clip
    starts on its first frame rather than on the keyframe before it)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "clip.mp4"
        result = subprocess.run(
            ["ffmpeg", "-v", "error", "-ss", f"{start:.3f}", "-i", source, "-t", f"{end - start:.3f}",
             "-map", "0:v:0", "-map", "0:a:0?", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
             "-pix_fmt", "yuv420p", "-threads", "1", "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart",
             str(out)], capture_output=True, text=True)
        if result.returncode != 0 or not out.is_file():
            raise MediaError(source, f"cutting {start:.2f}-{end:.2f} s failed ({result.stderr.strip()[-200:]})")
        return out.read_bytes()


class ShardMedia(Stage):
    """Labeling stage: labeled clips -> `members` (shard member extension -> bytes); decoded frames
    and audio are dropped here, so only labels and encoded media travel to the writer."""

    name = "shard_media"
    resources = Resources(cpus=1.0, memory_gb=1.0)

    def __init__(self, media: str = "as_is", frame_size: int = 224):
        self.media, self.frame_size = media, frame_size

    def members(self, record: dict) -> dict[str, bytes]:
        if self.media == "presampled":
            files = {f"{FRAME_MEMBER.format(i)}.jpg": jpeg_bytes(frame, self.frame_size)
                     for i, frame in enumerate(record["frames"])}
            files["wav"] = wav_bytes(record["waveform"])
            return files
        source = Path(record["source"])
        if record.get("whole"):
            return {source.suffix.lower().lstrip("."): source.read_bytes()}
        return {"mp4": cut_window(str(source), record["start"], record["end"])}

    def __call__(self, batch: list[dict]) -> list[dict]:
        for record in batch:
            if not record.get("error"):
                try:
                    record["members"] = self.members(record)
                except (MediaError, OSError) as error:
                    record["error"] = str(error)
            for key in DECODED_FIELDS:
                record.pop(key, None)
        return batch


def labels_of(record: dict) -> dict:
    """The text a shard's `json` member (and the annotation file) holds for a clip."""
    labels = {key: record[key] for key in LABEL_FIELDS if key in record}
    labels.setdefault("vision_cap", [])
    labels.setdefault("audio_cap", [])
    return labels


def skipped_of(record: dict) -> dict:
    return {"clip_id": record["clip_id"], "source": record.get("source", ""),
            "reason": skip_reason(record["error"]), "error": record["error"]}


class ShardWriter:
    """Writes one output shard from all its clips (in plan order) and marks it complete."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        (self.out_dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)

    def progress_path(self, shard: int) -> Path:
        return self.out_dir / PROGRESS_DIR / f"shard-{shard:06d}.json"

    def complete(self, shard: int) -> bool:
        """A shard is complete once its progress file is written (and its tar, if it has clips, is there)."""
        path = self.progress_path(shard)
        if not path.is_file():
            return False
        record = json.loads(path.read_text(encoding="utf-8"))
        return not record["samples"] or (self.out_dir / record["url"]).is_file()

    def write(self, shard: int, records: list[dict], seconds: dict[str, float]) -> dict:
        started = time.perf_counter()
        labeled = [r for r in records if not r.get("error")]
        url = SHARD_NAME.format(shard)
        size = 0
        if labeled:
            archive = ShardFile(self.out_dir / url)
            for record in labeled:
                archive.add(ShardSample(shard_key(record["clip_id"]), labels_of(record), record["members"]))
            size = archive.finish()
        seconds = {**seconds, "write": seconds.get("write", 0.0) + time.perf_counter() - started}
        progress = {"shard": shard, "url": url if labeled else None, "samples": len(labeled), "bytes": size,
                    "labels": [labels_of(r) for r in labeled], "skipped": [skipped_of(r) for r in records
                                                                          if r.get("error")],
                    "seconds": seconds}
        tmp = self.progress_path(shard).with_suffix(".json.tmp")
        tmp.write_text(json.dumps(progress, ensure_ascii=False), encoding="utf-8")
        tmp.replace(self.progress_path(shard))
        return progress

    def finish(self, num_shards: int, plan_skipped: list[dict], info: dict, run: dict) -> dict:
        """shards.json, annotations.json and report.json from every shard's progress file."""
        shards = [json.loads(self.progress_path(k).read_text(encoding="utf-8")) for k in range(num_shards)]
        skipped = list(plan_skipped) + [s for shard in shards for s in shard["skipped"]]
        index = {"format_version": FORMAT_VERSION, "vision_format": "video_rawvideo", "corpus": "vast27m",
                 **info, "shards": [{"url": s["url"], "samples": s["samples"], "bytes": s["bytes"]}
                                    for s in shards if s["samples"]],
                 "total": sum(s["samples"] for s in shards),
                 "failed": [{"clip_id": s["clip_id"], "error": s["error"]} for s in skipped]}
        _write_json(self.out_dir / INDEX_NAME, index)
        _write_json(self.out_dir / ANNOTATIONS_NAME, [labels for s in shards for labels in s["labels"]])
        stage_seconds: dict[str, float] = {}
        for shard in shards:
            for stage, value in shard["seconds"].items():
                stage_seconds[stage] = stage_seconds.get(stage, 0.0) + value
        busy = sum(stage_seconds.values()) or 1.0
        by_reason: dict[str, int] = {}
        for item in skipped:
            by_reason[item["reason"]] = by_reason.get(item["reason"], 0) + 1
        report = {"labeled": index["total"], "skipped": len(skipped), "skipped_by_reason": by_reason,
                  "shards": len(index["shards"]), **run,
                  "stages": {stage: {"seconds": round(value, 2), "share": round(value / busy, 3)}
                             for stage, value in stage_seconds.items()},
                  "skipped_clips": skipped}
        _write_json(self.out_dir / REPORT_NAME, report)
        return report


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def report_table(report: dict) -> str:
    """The report as a few lines of text for the terminal."""
    lines = [f"labeled {report['labeled']} clips into {report['shards']} shards; skipped {report['skipped']}"]
    if "wall_seconds" in report:
        lines[0] += f" ({report['wall_seconds']:.1f} s, {report.get('clips_per_second', 0):.2f} clips/s)"
    if report["stages"]:
        lines.append(f"  {'stage':<16}{'seconds':>10}{'share':>8}")
        lines += [f"  {stage:<16}{v['seconds']:>10.1f}{v['share'] * 100:>7.1f}%" for stage, v in report["stages"].items()]
    if report["skipped_clips"]:
        lines.append("  skipped:")
        lines += [f"  - {s['clip_id']}: {s['reason']} ({s['error']})" for s in report["skipped_clips"][:20]]
        if len(report["skipped_clips"]) > 20:
            lines.append(f"  ... and {len(report['skipped_clips']) - 20} more in report.json")
    return "\n".join(lines)
