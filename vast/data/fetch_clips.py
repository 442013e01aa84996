"""Fetch VAST-27M clips: download each source video once with yt-dlp and cut its clips with ffmpeg.

The release annotation is a JSON list of objects, each with a `clip_id`. A clip's source is its
`url`, else its `video_id`/`youtube_id` put into `--url_template`; its span is `span` or
`timestamp` ([start, end]) or `start` + `end`, each seconds or "HH:MM:SS(.mmm)" text. Whatever is
not given explicitly comes from a clip_id of the form `<video_id>_<start>_<end>` (split from the
right: YouTube ids contain `_` and `-`). A row whose source or span cannot be found this way is
reported as bad, never guessed.

Layout under OUT: `sources/<video_id>.<ext>` (or `url-<hash>.<ext>` for a bare url), downloaded
once however many clips come from it; `videos/<clip_id>.mp4`, re-encoded (libx264 + aac) so the cut
is frame-accurate and the file holds only the clip, or stream-copied with `--stream_copy` (fast,
but the file also carries the frames back to the preceding keyframe, which only readers honouring
the mp4 edit list skip). Sources and clips are written under `.partial/` and renamed into place
when complete, so a file under its final name is always whole: a killed run is resumed by running the same command, which skips finished clips and
downloaded sources. `fetch_report.json` lists the clips done, the unavailable ones (the download
or the cut failed: one-line reason) and the bad rows (no source or span, span outside the video).

Command line:
    python -m vast.data.fetch_clips --txt RELEASE.json --out DIR [--url_template T] [--format F]
        [--workers N] [--retries N] [--stream_copy] [--delete_sources] [--ffmpeg PATH]
Exit status: 0 when some clip is done (now or before) or there was nothing to fetch, 1 when no clip
could be fetched, 2 on bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import yt_dlp
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vast.errors import DataError, VastError

logger = logging.getLogger("vast")

DEFAULT_URL_TEMPLATE = "https://www.youtube.com/watch?v={video_id}"
DEFAULT_FORMAT = "best[ext=mp4]/best"
REPORT_NAME = "fetch_report.json"
PARTIAL = ".partial"  # files are written here and renamed into place when whole
SPAN_SLACK_S = 0.5  # a span may end this far past the video: release timestamps are rounded
REENCODE = ["-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2",  # 4:2:0 H.264 needs an even width and height
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k"]
_FILE_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")  # also glob-safe: sources are found by `<stem>.*`


@dataclass(frozen=True)
class Clip:
    clip_id: str
    url: str
    video_id: str | None  # set when the url was built from a video id: it then names the source file
    start: float
    end: float


@dataclass
class Source:
    url: str
    stem: str  # file name of the download under sources/, without extension
    clips: list[Clip]


@dataclass
class Report:
    """What a run did; `write()` stores it as JSON at `path`."""

    path: Path
    rows: int = 0
    done: list[str] = field(default_factory=list)  # clips whose file exists, cut now or before
    fetched: int = 0  # of `done`, cut in this run
    unavailable: list[dict] = field(default_factory=list)  # {"clip_id", "url", "reason"}
    bad: list[dict] = field(default_factory=list)  # {"clip_id", "row"?, "reason"}

    def summary(self) -> str:
        return (f"{len(self.done)} clip(s) done ({self.fetched} fetched now, {len(self.done) - self.fetched} "
                f"already there), {len(self.unavailable)} unavailable, {len(self.bad)} bad; report: {self.path}")

    def write(self) -> None:
        data = {"rows": self.rows, "done": sorted(self.done), "fetched_now": self.fetched,
                "unavailable": self.unavailable, "bad": self.bad}
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(partial, self.path)


@dataclass(frozen=True)
class FetchOptions:
    url_template: str = DEFAULT_URL_TEMPLATE
    video_format: str = DEFAULT_FORMAT
    workers: int = 4
    retries: int = 3
    stream_copy: bool = False
    delete_sources: bool = False
    ffmpeg: str = "ffmpeg"
    progress: bool = False


class _DownloadFailed(Exception):
    """A source could not be downloaded or read; str() is the one-line reason."""


def parse_seconds(value) -> float:
    """Seconds from a number or from "SS(.mmm)", "MM:SS(.mmm)" or "HH:MM:SS(.mmm)" text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value)
    if isinstance(value, str):
        parts = value.strip().split(":")
        if (len(parts) <= 3 and all(re.fullmatch(r"\d+", part) for part in parts[:-1])
                and re.fullmatch(r"\d+(\.\d*)?", parts[-1])):
            return sum(float(part) * 60 ** power for power, part in enumerate(reversed(parts)))
    raise ValueError(f"{value!r} is not a time (seconds or HH:MM:SS.mmm)")


def _split_clip_id(clip_id: str) -> tuple[str, float, float] | None:
    """(video_id, start, end) of a `<video_id>_<start>_<end>` clip_id, else None."""
    parts = clip_id.rsplit("_", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    try:
        return parts[0], parse_seconds(parts[1]), parse_seconds(parts[2])
    except ValueError:
        return None


def _explicit_span(row: dict) -> tuple[float, float] | None:
    for key in ("span", "timestamp"):
        if key in row:
            span = row[key]
            if not isinstance(span, (list, tuple)) or len(span) != 2:
                raise ValueError(f"'{key}' must be [start, end], not {span!r}")
            return parse_seconds(span[0]), parse_seconds(span[1])
    if "start" in row and "end" in row:
        return parse_seconds(row["start"]), parse_seconds(row["end"])
    return None


def clip_of(row, url_template: str = DEFAULT_URL_TEMPLATE) -> Clip:
    """The clip an annotation row asks for; DataError saying why when its source or span is not there."""
    clip_id = row.get("clip_id") if isinstance(row, dict) else None
    if not isinstance(clip_id, str) or not clip_id:
        raise DataError("no clip_id")
    if "/" in clip_id or "\\" in clip_id or clip_id.startswith("."):
        raise DataError(f"clip_id {clip_id!r} cannot name a file")
    from_id = _split_clip_id(clip_id)
    try:
        span = _explicit_span(row) or (from_id and from_id[1:])
    except ValueError as error:
        raise DataError(f"bad span: {error}") from None
    if not span:
        raise DataError("no span: give 'span' or 'timestamp' [start, end], 'start' and 'end', "
                        "or a clip_id <video_id>_<start>_<end>")
    start, end = span
    if end <= start:
        raise DataError(f"span [{start:g}, {end:g}] is empty")
    if isinstance(row.get("url"), str) and row["url"]:
        return Clip(clip_id, row["url"], None, start, end)
    video_id = row.get("video_id") or row.get("youtube_id") or (from_id and from_id[0])
    if not isinstance(video_id, str):
        raise DataError("no source: give 'url', 'video_id' or 'youtube_id', or a clip_id <video_id>_<start>_<end>")
    return Clip(clip_id, url_template.format(video_id=video_id), video_id, start, end)


def group_by_source(clips: list[Clip]) -> list[Source]:
    """One Source per url, in order of first appearance, named by its video id when it has a safe one."""
    groups: dict[str, list[Clip]] = {}
    for clip in clips:
        groups.setdefault(clip.url, []).append(clip)
    sources = []
    for url, group in groups.items():
        video_id = next((c.video_id for c in group if c.video_id and _FILE_SAFE_ID.fullmatch(c.video_id)), None)
        stem = video_id or "url-" + hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]
        sources.append(Source(url, stem, group))
    return sources


def read_release(path) -> list:
    """The rows of a release annotation file; DataError naming the file when it is not a JSON list."""
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"annotation file {path} cannot be read: {error}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"annotation file {path} is not valid JSON: {error}") from None
    if not isinstance(rows, list):
        raise DataError(f"annotation file {path}: expected a JSON list of objects, got {type(rows).__name__}")
    return rows


def _clips_of(rows: list, url_template: str, report: Report) -> list[Clip]:
    """The clips of the rows, each clip_id once; the rows that name none go to `report.bad`."""
    clips, first_row = [], {}
    for index, row in enumerate(rows):
        try:
            clip = clip_of(row, url_template)
        except DataError as error:
            clip_id = row.get("clip_id") if isinstance(row, dict) else None
            report.bad.append({"clip_id": clip_id, "row": index, "reason": str(error)})
            continue
        if clip.clip_id in first_row:
            report.bad.append({"clip_id": clip.clip_id, "row": index,
                               "reason": f"duplicate clip_id (first at row {first_row[clip.clip_id]})"})
            continue
        first_row[clip.clip_id] = index
        clips.append(clip)
    return clips


class _YtdlpLog:
    """yt-dlp's messages go to the debug log: a failure is raised, and reported once, by us."""

    def debug(self, message: str) -> None:
        logger.debug("yt-dlp: %s", message)

    info = warning = error = debug


def _reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    return re.sub(r" \(caused by .*\)$", "", first.removeprefix("ERROR: "))  # yt-dlp repeats the cause


def _download(source: Source, sources_dir: Path, options: FetchOptions) -> Path:
    """Download `source` with yt-dlp into sources/.partial/, then move it under its final name."""
    ydl_options = {
        "outtmpl": str(sources_dir / PARTIAL / f"{source.stem}.%(ext)s"),
        "format": options.video_format,
        "noplaylist": True,
        "quiet": True, "noprogress": True, "no_warnings": True, "color": "no_color",
        "retries": options.retries, "fragment_retries": options.retries, "extractor_retries": options.retries,
        "ffmpeg_location": options.ffmpeg,
        "logger": _YtdlpLog(),
    }
    try:
        with yt_dlp.YoutubeDL(ydl_options) as ydl:
            info = ydl.extract_info(source.url, download=True)
    except Exception as error:  # yt-dlp wraps most failures in DownloadError, but not all of them
        raise _DownloadFailed(_reason(error)) from None
    files = [item["filepath"] for item in (info or {}).get("requested_downloads", []) if item.get("filepath")]
    if len(files) != 1 or not Path(files[0]).is_file():
        raise _DownloadFailed(f"yt-dlp gave {len(files)} files, expected one video")
    final = sources_dir / (source.stem + Path(files[0]).suffix)
    os.replace(files[0], final)
    return final


def _duration(path: Path) -> float | None:
    """Seconds of media in `path` (None when the container does not say); _DownloadFailed if unreadable."""
    try:
        with av.open(str(path)) as container:
            if container.duration:
                return container.duration / av.time_base
            lengths = [float(s.duration * s.time_base) for s in container.streams if s.duration]
            return max(lengths, default=None)
    except (av.FFmpegError, OSError) as error:
        raise _DownloadFailed(f"downloaded file is not readable media: {_reason(error)}") from None


def cut_command(ffmpeg: str, source: Path, clip: Clip, target: Path, stream_copy: bool = False) -> list[str]:
    """The ffmpeg argument list that cuts `clip` out of `source` into the mp4 `target`."""
    codecs = ["-c", "copy"] if stream_copy else REENCODE
    # -ss before -i seeks the input; with re-encoding ffmpeg still decodes up to the exact start.
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-ss", f"{clip.start:.3f}", "-i", str(source), "-t", f"{clip.end - clip.start:.3f}",
            "-map", "0:v:0", "-map", "0:a:0?", *codecs, "-movflags", "+faststart", "-f", "mp4", str(target)]


class _Run:
    """One fetch over OUT: the thread pools, the report and the progress bar they share."""

    def __init__(self, out: Path, options: FetchOptions, report: Report, total: int):
        self.sources_dir, self.videos_dir = out / "sources", out / "videos"
        for folder in (self.sources_dir / PARTIAL, self.videos_dir / PARTIAL):
            folder.mkdir(parents=True, exist_ok=True)
        self.options, self.report = options, report
        self.lock = threading.Lock()
        self.bar = tqdm(total=total, unit="clip", desc="fetch", disable=not options.progress)
        self.cut_pool = ThreadPoolExecutor(options.workers, thread_name_prefix="cut")

    def clip_path(self, clip: Clip) -> Path:
        return self.videos_dir / f"{clip.clip_id}.mp4"

    def record(self, clip: Clip, outcome: str, reason: str = "") -> None:
        with self.lock:
            if outcome in ("fetched", "existing"):
                self.report.done.append(clip.clip_id)
                self.report.fetched += outcome == "fetched"
            elif outcome == "unavailable":
                self.report.unavailable.append({"clip_id": clip.clip_id, "url": clip.url, "reason": reason})
            else:
                self.report.bad.append({"clip_id": clip.clip_id, "reason": reason})
            self.bar.update(1)

    def fetch_all(self, sources: list[Source]) -> None:
        try:
            # A source task waits for its cuts, so at most `workers` downloaded sources wait to be cut.
            with ThreadPoolExecutor(self.options.workers, thread_name_prefix="download") as download_pool:
                list(download_pool.map(self.fetch_source, sources))
        finally:
            self.cut_pool.shutdown(cancel_futures=True)
            self.bar.close()
        for folder in (self.sources_dir / PARTIAL, self.videos_dir / PARTIAL):
            if not any(folder.iterdir()):
                folder.rmdir()

    def fetch_source(self, source: Source) -> None:
        pending = []
        for clip in source.clips:
            if self.clip_path(clip).exists():
                self.record(clip, "existing")
            else:
                pending.append(clip)
        if not pending:
            return
        path = None
        try:
            path = self.downloaded(source) or _download(source, self.sources_dir, self.options)
            duration = _duration(path)
        except _DownloadFailed as error:
            if path is not None:  # unreadable: a rerun downloads it again
                path.unlink()
            logger.warning("unavailable: %s: %s", source.url, error)
            for clip in pending:
                self.record(clip, "unavailable", str(error))
            return
        cuts = [self.cut_pool.submit(self.cut, clip, path, duration) for clip in pending]
        if all([cut.result() for cut in cuts]) and self.options.delete_sources:
            path.unlink()

    def downloaded(self, source: Source) -> Path | None:
        return next((path for path in sorted(self.sources_dir.glob(f"{source.stem}.*")) if path.is_file()), None)

    def cut(self, clip: Clip, source: Path, duration: float | None) -> bool:
        """Cut one clip; False only when ffmpeg failed (the source is then kept for a rerun)."""
        if duration is not None and (clip.start >= duration or clip.end > duration + SPAN_SLACK_S):
            self.record(clip, "bad", f"span [{clip.start:g}, {clip.end:g}] is outside the video ({duration:.3f} s)")
            return True
        partial = self.videos_dir / PARTIAL / f"{clip.clip_id}.mp4"
        command = cut_command(self.options.ffmpeg, source, clip, partial, self.options.stream_copy)
        result = subprocess.run(command, capture_output=True, text=True, errors="replace")
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
            self.record(clip, "unavailable", f"ffmpeg could not cut it: {lines[0]}")  # the cause; later lines follow from it
            partial.unlink(missing_ok=True)
            return False
        os.replace(partial, self.clip_path(clip))
        self.record(clip, "fetched")
        return True


def _check_template(url_template: str) -> None:
    try:
        filled = url_template.format(video_id="VIDEO_ID")
    except (KeyError, IndexError, ValueError) as error:
        raise DataError(f"--url_template {url_template!r} is not a template with {{video_id}}: {error!r}") from None
    if "VIDEO_ID" not in filled:
        raise DataError(f"--url_template {url_template!r} has no {{video_id}} to fill in")


def fetch_clips(annotation_path, out_dir, **options) -> Report:
    """Fetch every clip of a release annotation file into `out_dir` (FetchOptions fields as keywords)."""
    rows = read_release(annotation_path)
    settings = FetchOptions(**options)
    _check_template(settings.url_template)
    if settings.workers < 1 or settings.retries < 0:
        raise DataError("--workers must be at least 1 and --retries at least 0")
    ffmpeg = shutil.which(settings.ffmpeg)
    if ffmpeg is None:
        raise DataError(f"ffmpeg not found: {settings.ffmpeg} (install it, or pass --ffmpeg PATH)")
    settings = replace(settings, ffmpeg=ffmpeg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out / REPORT_NAME, rows=len(rows))
    clips = _clips_of(rows, settings.url_template, report)
    _Run(out, settings, report, len(clips)).fetch_all(group_by_source(clips))
    report.write()
    return report


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vast.data.fetch_clips",
                                     description="Download VAST-27M source videos and cut their clips.")
    parser.add_argument("--txt", required=True, help="release annotation JSON (a list of objects with clip_id)")
    parser.add_argument("--out", required=True, help="output folder: videos/<clip_id>.mp4, sources/, " + REPORT_NAME)
    parser.add_argument("--url_template", default=DEFAULT_URL_TEMPLATE, help="url of a video id, with {video_id}")
    parser.add_argument("--format", dest="video_format", default=DEFAULT_FORMAT, help="yt-dlp format selector")
    parser.add_argument("--workers", type=int, default=4, help="parallel downloads, and parallel cuts")
    parser.add_argument("--retries", type=int, default=3, help="yt-dlp retries per download")
    parser.add_argument("--stream_copy", action="store_true",
                        help="copy streams instead of re-encoding: fast, but each clip also holds the frames back "
                             "to the keyframe before its start (hidden by an mp4 edit list)")
    parser.add_argument("--delete_sources", action="store_true", help="remove a source once all its clips are cut")
    parser.add_argument("--ffmpeg", default="ffmpeg", help="ffmpeg binary")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        with logging_redirect_tqdm():  # warnings print above the progress bar instead of through it
            report = fetch_clips(args.txt, args.out, url_template=args.url_template, video_format=args.video_format,
                                 workers=args.workers, retries=args.retries, stream_copy=args.stream_copy,
                                 delete_sources=args.delete_sources, ffmpeg=args.ffmpeg, progress=sys.stderr.isatty())
    except VastError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 1 if report.rows and not report.done else 0


if __name__ == "__main__":
    sys.exit(main())
