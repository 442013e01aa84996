"""Write a corpus (annotation file + media folders) as WebDataset shards; the shard format and its index.

One sample per clip (DESIGN 2.6): the media (`mp4` or the video's own extension, `jpg` for images,
`frame0000.jpg`... for frame folders) and `wav`/`flac`/... when the clip's audio is a separate file,
plus `json` holding the clip's text: `clip_id`, the captions of whatever annotation format it came
from (`desc`, `vision_cap`, `audio_cap`, `vast_cap`, `question`/`answer`), `subtitle` (and
`subtitle_segments` when known), `source` (the media file it came from) and `duration` (seconds).

Two ways to store media (`--media`):
- `as_is`: the original file bytes. Reading decodes exactly as from the folders (same batches), so
  the shards are a faithful, smaller-file-count copy of the corpus.
- `presampled`: `--frames N` frames per clip (evaluation's frame positions: the middle of N equal
  segments) as JPEG with the shorter side at most `--frame_size`, and the audio as 16 kHz mono
  PCM16 `wav`. Loading then decodes N small JPEGs instead of a video: much cheaper, at the price of
  a fixed frame set (training samples `vision_sample_num` of the N frames) and JPEG loss.

Shards are `shard-000000.tar`, ... and `shards.json` indexes them (file, sample count, bytes; the
total; how media are stored), so `epoch` budgets and progress know the corpus size. Each shard is
written to a temporary file and renamed when complete; `shards.progress.jsonl` records complete
shards as they land, so a rerun skips the clips of complete shards and continues.

Command line:
    python -m vast.data.shards write --txt ANNOTATIONS.json --vision DIR [--audio DIR] --out DIR
        [--shard_size N | --shard_bytes BYTES] [--media as_is|presampled] [--frames 8] [--frame_size 224]
        [--vision_format video_rawvideo|video_frame|image_rawimage] [--workers N] [--on_error skip|stop]
    python -m vast.data.shards vast27m --txt vast27m.json --vision DIR [--audio DIR] --out DIR [...]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import re
import sys
import tarfile
import time
import wave
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image

from vast.config import read_json, resolve_path
from vast.data import media
from vast.data.annotations import ID_KEYS, normalise_row
from vast.errors import DataError, VastError

logger = logging.getLogger(__name__)

INDEX_NAME = "shards.json"
PROGRESS_NAME = "shards.progress.jsonl"
SHARD_NAME = "shard-{:06d}.tar"
FRAME_MEMBER = "frame{:04d}"
MEDIA_MODES = ("as_is", "presampled")
FORMAT_VERSION = 1


def shard_key(clip_id: str) -> str:
    """The tar member prefix of a clip. WebDataset splits a member name at the first dot of its
    base name and treats '/' as folders, so those (and '%') are percent-encoded; `json` keeps the id."""
    return quote(clip_id, safe=" -_~()[]{}+,;=@!$&'").replace(".", "%2E")


@dataclass
class ShardSample:
    """One clip ready to be written: its text record and its media members (extension -> bytes)."""

    key: str
    record: dict
    files: dict[str, bytes] = field(default_factory=dict)


def _tar_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444  # fixed metadata: the same input, the same bytes
    archive.addfile(info, io.BytesIO(data))


class ShardFile:
    """One shard being written: members go to `<name>.tmp`, renamed to `<name>` by `finish()`, so
    a shard on disk under its own name is always complete."""

    def __init__(self, path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.archive = tarfile.open(self.tmp, "w", format=tarfile.PAX_FORMAT)
        self.ids: list[str] = []

    def add(self, sample: ShardSample) -> None:
        _tar_member(self.archive, f"{sample.key}.json", json.dumps(sample.record, ensure_ascii=False).encode())
        for extension in sorted(sample.files):
            _tar_member(self.archive, f"{sample.key}.{extension}", sample.files[extension])
        self.ids.append(sample.record["clip_id"])

    @property
    def bytes_written(self) -> int:
        return self.archive.offset

    def finish(self) -> int:
        """Complete the shard (rename into place); returns its size in bytes."""
        self.archive.close()
        self.tmp.replace(self.path)
        return self.path.stat().st_size



class ShardSetWriter:
    """Streams samples into numbered shards of at most `max_samples` samples or about `max_bytes`
    bytes (a shard closes once it holds that much; nothing is held in memory but one sample),
    records each complete shard in the progress file, and writes `shards.json` on `close()`."""

    def __init__(self, out_dir, max_samples: int | None = None, max_bytes: int | None = None,
                 info: dict | None = None):
        if not max_samples and not max_bytes:
            max_samples = 1000
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.info = dict(info or {})
        self.progress_path = self.out_dir / PROGRESS_NAME
        self.shards = self._complete_shards()
        self.done_ids = {clip for shard in self.shards for clip in shard.pop("ids_", [])}
        self._current: ShardFile | None = None

    def _complete_shards(self) -> list[dict]:
        """Shards of an earlier run that are on disk at their recorded size."""
        complete = []
        if self.progress_path.is_file():
            for line in self.progress_path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                path = self.out_dir / record["url"]
                if path.is_file() and path.stat().st_size == record["bytes"]:
                    complete.append({**record, "ids_": record.pop("ids")})
        return complete

    def add(self, sample: ShardSample) -> None:
        if self._current is None:
            self._current = ShardFile(self.out_dir / self._next_name())
        self._current.add(sample)
        if (self.max_samples and len(self._current.ids) >= self.max_samples) or \
                (self.max_bytes and self._current.bytes_written >= self.max_bytes):
            self.flush()

    def _next_name(self) -> str:
        used = [int(m.group(1)) for s in self.shards if (m := re.match(r"shard-(\d+)\.tar$", s["url"]))]
        return SHARD_NAME.format(max(used, default=-1) + 1)

    def flush(self) -> None:
        """Complete the shard being written, if any, and record it."""
        if self._current is None:
            return
        shard, self._current = self._current, None
        size = shard.finish()
        record = {"url": shard.path.name, "samples": len(shard.ids), "bytes": size}
        with open(self.progress_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({**record, "ids": shard.ids}) + "\n")
        self.shards.append(record)
        logger.info("wrote %s (%d samples, %.1f MB)", shard.path.name, len(shard.ids), size / 1e6)

    def close(self, failed: list[dict] | None = None) -> dict:
        self.flush()
        index = {"format_version": FORMAT_VERSION, **self.info, "shards": self.shards,
                 "total": sum(s["samples"] for s in self.shards), "failed": failed or []}
        tmp = self.out_dir / (INDEX_NAME + ".tmp")
        tmp.write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(self.out_dir / INDEX_NAME)
        return index


def read_index(path) -> dict:
    """A `shards.json`, checked: the shard files it lists are resolved against its folder."""
    path = resolve_path(path)
    index = read_json(path, "shard index")
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise DataError(f"{path}: not a shard index (expected {{\"shards\": [{{\"url\", \"samples\"}}], ...}})")
    return index


# --- turning a clip into a sample ----------------------------------------------------------------


@dataclass(frozen=True)
class WriteOptions:
    vision_dir: Path | None
    audio_dir: Path | None
    vision_format: str = "video_rawvideo"
    media_mode: str = "as_is"
    frames: int = 8
    frame_size: int = 224
    source: str = ""


def jpeg_bytes(frame: torch.Tensor, max_side: int) -> bytes:
    """uint8 [3, H, W] -> JPEG bytes, the shorter side scaled down to `max_side` (never up)."""
    image = Image.fromarray(frame.permute(1, 2, 0).numpy())
    scale = max_side / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def wav_bytes(waveform) -> bytes:
    """A 16 kHz mono float waveform (tensor or array) as PCM16 WAV bytes."""
    pcm = (np.clip(np.asarray(waveform, dtype=np.float32), -1, 1) * 32767).round().astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(media.SAMPLE_RATE)
        handle.writeframes(pcm.tobytes())
    return out.getvalue()


def _wav_16k(source) -> bytes:
    """The first audio stream of a file as 16 kHz mono PCM16 WAV bytes."""
    return wav_bytes(media.load_waveform(source))


def _vision_members(path: Path, options: WriteOptions) -> dict[str, bytes]:
    fmt = options.vision_format
    if options.media_mode == "as_is":
        if fmt == "video_frame":
            images = media.frame_folder_images(path)
            return {f"{FRAME_MEMBER.format(i)}{p.suffix.lower()}": p.read_bytes() for i, p in enumerate(images)}
        data = path.read_bytes()
        if not data:
            raise media.MediaError(path, "is empty (0 bytes); re-create or remove it")
        return {path.suffix.lower().lstrip("."): data}
    reader = media.VISION_READERS[fmt]
    frames = reader(path, 1 if fmt == "image_rawimage" else options.frames, False, random.Random(0))
    if fmt == "image_rawimage":
        return {"jpg": jpeg_bytes(frames[0], options.frame_size)}
    return {f"{FRAME_MEMBER.format(i)}.jpg": jpeg_bytes(frame, options.frame_size) for i, frame in enumerate(frames)}


def clip_to_sample(row: dict, options: WriteOptions, where: str) -> ShardSample:
    """An annotation row (any format of DESIGN 2.4) + its media -> a ShardSample; MediaError/DataError
    name the file when the media is missing or cannot be decoded."""
    sample = normalise_row(row, where)
    record = {"clip_id": sample.id, **{k: v for k, v in row.items() if k not in ID_KEYS}}
    files: dict[str, bytes] = {}
    vision_path = None
    if options.vision_dir is not None:
        extensions = {"image_rawimage": media.IMAGE_EXTENSIONS, "video_frame": ("",)}.get(
            options.vision_format, media.VIDEO_EXTENSIONS)
        vision_path = media.find_media_file(options.vision_dir, sample.id, extensions)
        files.update(_vision_members(vision_path, options))
    audio_path = None
    if options.audio_dir is not None:
        try:
            audio_path = media.find_media_file(options.audio_dir, sample.id, media.AUDIO_EXTENSIONS)
        except DataError:
            audio_path = None  # as with annotation datasets: the video's own track is the audio
    if options.media_mode == "as_is" and audio_path is not None:
        files[audio_path.suffix.lower().lstrip(".")] = audio_path.read_bytes()
    elif options.media_mode == "presampled" and options.vision_format == "video_rawvideo":
        try:
            files["wav"] = _wav_16k(audio_path or vision_path)
        except media.MediaError as error:
            if "no audio stream" not in error.reason:
                raise
            record["audio_missing"] = True  # reported at read time when a task needs audio
    elif options.media_mode == "presampled" and audio_path is not None:
        files["wav"] = _wav_16k(audio_path)
    source = vision_path or audio_path
    if source is not None:
        record.setdefault("source", f"{options.source}{source.name}")
        if "duration" not in record and source.is_file():
            try:
                record["duration"] = round(media.probe_duration(source), 3)
            except media.MediaError:
                record["duration"] = None  # metadata only: the media itself decoded
    return ShardSample(shard_key(sample.id), record, files)


def _convert(job) -> tuple[int, ShardSample | None, str | None]:
    index, row, options, where = job
    try:
        return index, clip_to_sample(row, options, where), None
    except VastError as error:
        return index, None, str(error)


def write_shards(rows: list[dict], options: WriteOptions, out_dir, shard_size: int | None = None,
                 shard_bytes: int | None = None, workers: int = 1, on_error: str = "skip",
                 where: str = "annotations", info: dict | None = None) -> dict:
    """Write `rows` (with their media) as a shard set; returns the index. Clips already in complete
    shards of an earlier run are skipped; a clip whose media fails is reported (and recorded in the
    index under `failed`), or stops the run with `on_error="stop"`."""
    info = {"media": options.media_mode, "vision_format": options.vision_format,
            **({"frames": options.frames, "frame_size": options.frame_size}
               if options.media_mode == "presampled" else {}), **(info or {})}
    writer = ShardSetWriter(out_dir, shard_size, shard_bytes, info)
    ids = [normalise_row(row, f"{where} row {i}").id for i, row in enumerate(rows)]
    repeated = [clip for clip, count in Counter(ids).items() if count > 1]
    if repeated:
        raise DataError(f"{where}: {len(repeated)} clip id(s) repeat, e.g. {repeated[0]!r}; "
                        "a shard set holds each clip once")
    jobs = [(i, row, options, f"{where} row {i}") for i, row in enumerate(rows) if ids[i] not in writer.done_ids]
    if len(jobs) < len(rows):
        logger.info("%d of %d clips are in complete shards already; writing the other %d",
                    len(rows) - len(jobs), len(rows), len(jobs))
    failed: list[dict] = []
    started = time.perf_counter()
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    results = pool.map(_convert, jobs, chunksize=4) if pool else map(_convert, jobs)
    try:
        for done, (index, sample, error) in enumerate(results, 1):
            if error is not None:
                if on_error == "stop":
                    raise DataError(error)
                logger.warning("skipped: %s", error)
                failed.append({"clip_id": ids[index], "error": error})
            else:
                writer.add(sample)
            if done % 500 == 0:
                logger.info("%d/%d clips (%.1f clips/s)", done, len(jobs), done / (time.perf_counter() - started))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    index = writer.close(failed)
    return index


# --- command line --------------------------------------------------------------------------------


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m vast.data.shards",
                                     description="Write an annotated corpus as WebDataset shards.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("write", "annotation file (any VAST format) + media folders -> shards"),
                            ("vast27m", "VAST-27M release JSON + media folders -> shards")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--txt", required=True, help="annotation JSON file (a list of rows)")
        command.add_argument("--vision", default="", help="media folder (videos, images or frame folders)")
        command.add_argument("--audio", default="", help="optional folder of separate audio files")
        command.add_argument("--out", required=True, help="output folder for shard-*.tar and shards.json")
        command.add_argument("--shard_size", type=int, default=None, help="samples per shard (default 1000)")
        command.add_argument("--shard_bytes", type=float, default=None, help="bytes per shard instead, e.g. 1e9")
        command.add_argument("--media", choices=MEDIA_MODES, default="as_is")
        command.add_argument("--frames", type=int, default=8, help="presampled: frames stored per clip")
        command.add_argument("--frame_size", type=int, default=224, help="presampled: shorter side at most")
        command.add_argument("--vision_format", default="video_rawvideo",
                             choices=("video_rawvideo", "video_frame", "image_rawimage"))
        command.add_argument("--workers", type=int, default=1, help="processes that read and encode media")
        command.add_argument("--on_error", choices=("skip", "stop"), default="skip",
                             help="a clip whose media fails: report and skip it, or stop")
        command.add_argument("--source", default="", help="prefix for each sample's 'source' field")
    return parser.parse_args(argv)


def _check_vast27m(rows: list, where: str) -> None:
    for i, row in enumerate(rows):
        missing = [k for k in ("clip_id", "vision_cap", "audio_cap", "vast_cap") if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(f"{where} row {i}: a VAST-27M row needs clip_id, vision_cap, audio_cap, subtitle, "
                            f"vast_cap; missing {', '.join(missing)}")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        txt = resolve_path(args.txt)
        rows = read_json(txt, "annotation file")
        if not isinstance(rows, list) or not rows:
            raise DataError(f"{txt}: an annotation file is a non-empty JSON list of objects")
        if args.command == "vast27m":
            _check_vast27m(rows, str(txt))
        for value, flag in ((args.vision, "--vision"), (args.audio, "--audio")):
            if value and not resolve_path(value).is_dir():
                raise DataError(f"{flag}: folder not found: {value}")
        if not args.vision and not args.audio:
            raise DataError("give the media: --vision DIR and/or --audio DIR")
        if args.frames < 1 or args.frame_size < 8:
            raise DataError("--frames must be at least 1 and --frame_size at least 8")
        options = WriteOptions(resolve_path(args.vision) if args.vision else None,
                               resolve_path(args.audio) if args.audio else None,
                               args.vision_format, args.media, args.frames, args.frame_size, args.source)
        index = write_shards(rows, options, args.out, args.shard_size,
                             int(args.shard_bytes) if args.shard_bytes else None, args.workers, args.on_error,
                             str(txt), {"annotations": str(txt), **({"corpus": "vast27m"} if args.command == "vast27m" else {})})
    except VastError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{index['total']} clips in {len(index['shards'])} shards: {Path(args.out) / INDEX_NAME}")
    if index["failed"]:
        print(f"{len(index['failed'])} clip(s) failed and are not in the shards (listed under 'failed' in "
              f"{INDEX_NAME}); first: {index['failed'][0]['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
