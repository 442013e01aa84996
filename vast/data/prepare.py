"""Prepare a benchmark's media: extract every video's 16 kHz mono wav (and optionally its jpg frames), in
parallel and resumably, then check a recipe's data.

Outputs are named as the annotation loader looks them up (`vast.data.annotations`):
`<audios>/<video_id>.wav`, 16-bit PCM at the loader's sample rate, from the video's first audio stream
(the one the loader would otherwise decode); with `--frames`, `<frames>/<video_id>/000001.jpg ...`, one
folder per video, the `vision_format: video_frame` layout. Each output is written under `.partial/`
and renamed into place when whole, so a killed run leaves no half file under a final name and a rerun
skips every output that exists.

A video without an audio stream gets no wav: silence written here would later pass for real sound.
It is listed at the end; a recipe that should accept such clips says so in its data entries with
`"audio_missing": "zeros"`. A video that cannot be read is listed with its reason and the others go
on. ffmpeg decodes and encodes (an argument list, never a shell line); PyAV only probes for the audio
stream, with the same opener the loader uses.

Command line:
    python -m vast.data.prepare --videos DIR --audios DIR [--frames DIR --fps 3] [--workers N]
        [--config RECIPE.json] [--ffmpeg PATH]
With `--config`, the recipe's data are then checked as `run.py --mode check_data` does.
Exit status: 0 when no video failed and the check (if any) found nothing, 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import wave
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from vast.config import Config, check_data_paths, load_config
from vast.data.media import SAMPLE_RATE
from vast.data.sources import VIDEO_EXTENSIONS, open_container
from vast.errors import DataError, MediaError, VastError

PARTIAL = ".partial"  # outputs are written here and renamed into place when whole
DEFAULT_FPS = 3.0  # the release's frames_fps3 folders
JPEG_QUALITY = "2"  # ffmpeg's -q:v runs from 2 (best) to 31; its default is visibly blocky
STATUSES = ("extracted", "skipped", "no_audio", "failed")
NO_AUDIO_HINT = ('no wav written; a recipe accepts such clips with "audio_missing": "zeros" in its data '
                 'entries, as silence')


@dataclass(frozen=True)
class VideoResult:
    video: Path
    status: str  # one of STATUSES; "extracted": something was written in this run
    reason: str = ""  # why it failed


@dataclass
class PrepareReport:
    """What a run did, one result per video."""

    results: list[VideoResult] = field(default_factory=list)

    def of(self, status: str) -> list[VideoResult]:
        return [result for result in self.results if result.status == status]

    def summary(self) -> str:
        count = {status: len(self.of(status)) for status in STATUSES}
        return (f"{len(self.results)} video(s): {count['extracted']} extracted, {count['skipped']} skipped "
                f"(already there), {count['no_audio']} no audio, {count['failed']} failed")

    def lines(self) -> list[str]:
        """The summary, then every video without audio and every failure with its reason."""
        lines = [self.summary()]
        if self.of("no_audio"):
            lines += [f"no audio stream ({NO_AUDIO_HINT}):"] + [f"  {r.video}" for r in self.of("no_audio")]
        if self.of("failed"):
            lines += ["failed:"] + [f"  {r.video}: {r.reason}" for r in self.of("failed")]
        return lines


def list_videos(video_dir) -> list[Path]:
    """The videos of a folder, one per id; where two share an id, the one the loader would pick."""
    folder = Path(video_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: video folder not found; give --videos the folder that holds the videos")
    rank = {extension: i for i, extension in enumerate(VIDEO_EXTENSIONS)}
    chosen: dict[str, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: (p.stem, rank.get(p.suffix.lower(), len(rank)))):
        if path.suffix.lower() in rank and path.is_file():
            chosen.setdefault(path.stem, path)
    if not chosen:
        raise DataError(f"{folder}: no video files ({', '.join(VIDEO_EXTENSIONS)}); put the benchmark's videos "
                        "there first (datasets/README.md, step 2)")
    return list(chosen.values())


def audio_command(ffmpeg: str, video: Path, target: Path) -> list[str]:
    """ffmpeg arguments writing the video's first audio stream to `target` as 16-bit mono wav."""
    # For stereo, -ac 1 gives the channel mean, as the loader's own decoding of the video does.
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(video),
            "-map", "0:a:0", "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "wav", str(target)]


def frames_command(ffmpeg: str, video: Path, folder: Path, fps: float) -> list[str]:
    """ffmpeg arguments writing the video's frames at `fps` as numbered jpgs into `folder`."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(video),
            "-map", "0:v:0", "-vf", f"fps={fps:g}", "-q:v", JPEG_QUALITY, str(folder / "%06d.jpg")]


def _run_ffmpeg(command: list[str]) -> str | None:
    """None when ffmpeg succeeded, else its first error line (the cause; later lines follow from it)."""
    result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
    return f"ffmpeg: {lines[0]}"


def _has_audio_stream(video: Path) -> bool:
    with open_container(video) as container:  # a MediaError names an empty or unreadable file
        return bool(container.streams.audio)


def _empty_wav_problem(path: Path) -> str | None:
    with wave.open(str(path), "rb") as handle:
        return None if handle.getnframes() else "its audio stream holds no decodable samples"


@dataclass(frozen=True)
class _Outputs:
    """Where one run writes, and how; `prepare` does one video."""

    audio_dir: Path
    frames_dir: Path | None
    fps: float
    ffmpeg: str

    def prepare(self, video: Path) -> VideoResult:
        wav = self.audio_dir / f"{video.stem}.wav"
        frames = self.frames_dir / video.stem if self.frames_dir else None
        audio_due = not wav.exists()
        frames_due = frames is not None and not frames.is_dir()
        if not (audio_due or frames_due):
            return VideoResult(video, "skipped")
        try:
            has_audio = _has_audio_stream(video)
        except MediaError as error:
            return VideoResult(video, "failed", error.reason)
        problem = self._write_wav(video, wav) if audio_due and has_audio else None
        if problem is None and frames_due:
            problem = self._write_frames(video, frames)
        if problem:
            return VideoResult(video, "failed", problem)
        return VideoResult(video, "no_audio" if audio_due and not has_audio else "extracted")

    def _write_wav(self, video: Path, wav: Path) -> str | None:
        partial = self.audio_dir / PARTIAL / wav.name
        problem = _run_ffmpeg(audio_command(self.ffmpeg, video, partial)) or _empty_wav_problem(partial)
        if problem:
            partial.unlink(missing_ok=True)
            return problem
        os.replace(partial, wav)
        return None

    def _write_frames(self, video: Path, folder: Path) -> str | None:
        partial = self.frames_dir / PARTIAL / folder.name
        shutil.rmtree(partial, ignore_errors=True)  # what a killed run left
        partial.mkdir()
        problem = _run_ffmpeg(frames_command(self.ffmpeg, video, partial, self.fps))
        if problem is None and not any(partial.iterdir()):
            problem = "no frame could be decoded"
        if problem:
            shutil.rmtree(partial)
            return problem
        os.replace(partial, folder)
        return None


def _settings(workers: int | None, fps: float, ffmpeg: str) -> tuple[int, str]:
    """(worker count, ffmpeg binary), or a DataError saying what to change."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    if fps <= 0:
        raise DataError(f"--fps must be positive, got {fps:g}")
    binary = shutil.which(ffmpeg)
    if binary is None:
        raise DataError(f"ffmpeg not found: {ffmpeg} (install it, e.g. apt-get install ffmpeg, or pass --ffmpeg PATH)")
    return workers, binary


def prepare_media(video_dir, audio_dir, frames_dir=None, fps: float = DEFAULT_FPS, workers: int | None = None,
                  ffmpeg: str = "ffmpeg", progress: bool = False) -> PrepareReport:
    """Extract the wav (and with `frames_dir`, the frames) of every video in `video_dir` that lacks
    them; `workers` videos at a time (default: one per CPU)."""
    videos = list_videos(video_dir)
    workers, binary = _settings(workers, fps, ffmpeg)
    outputs = _Outputs(Path(audio_dir), Path(frames_dir) if frames_dir else None, fps, binary)
    partial_dirs = [folder / PARTIAL for folder in (outputs.audio_dir, outputs.frames_dir) if folder]
    for folder in partial_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    report = PrepareReport()
    bar = tqdm(total=len(videos), unit="video", desc="prepare", disable=not progress)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="prepare")  # the work runs in ffmpeg processes
    try:
        for future in as_completed([pool.submit(outputs.prepare, video) for video in videos]):
            report.results.append(future.result())
            bar.update()
    finally:
        pool.shutdown(cancel_futures=True)  # on Ctrl-C, start no further video
        bar.close()
    for folder in partial_dirs:
        if not any(folder.iterdir()):
            folder.rmdir()
    report.results.sort(key=lambda result: result.video)
    return report


def check_recipe(config: Config) -> bool:
    """Run `--mode check_data` on a recipe's data and print its result; True when nothing is wrong."""
    # Imported here: the loaders and tokenizers are needed only when a check is asked for.
    from vast.data.check import check_data
    from vast.distributed import init_distributed

    check_data_paths(config)
    try:
        report = check_data(config, init_distributed())
    except DataError as error:  # problems found; check_data has logged their table
        print(error)
        return False
    for dataset in report["datasets"]:
        print(f"checked {dataset['dataset']} ({dataset['split']}): {dataset['items_read']} item(s) readable")
    print(f"check_data: ok; report: {report['path']}")
    return True


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vast.data.prepare",
                                     description="Extract 16 kHz mono wav (and jpg frames) from a folder of videos.")
    parser.add_argument("--videos", required=True, help="folder of videos (<video_id>.mp4, .mkv, .webm, ...)")
    parser.add_argument("--audios", required=True, help="output folder: <video_id>.wav")
    parser.add_argument("--frames", help="also write frame folders here: <video_id>/000001.jpg ... (video_frame)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frames per second with --frames")
    parser.add_argument("--workers", type=int, help="videos at a time (default: one per CPU)")
    parser.add_argument("--config", help="a recipe whose data to check afterwards, as run.py --mode check_data")
    parser.add_argument("--ffmpeg", default="ffmpeg", help="ffmpeg binary")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    # The failure list names each unreadable file and why; libav's own lines would repeat it, unnamed.
    logging.getLogger("libav").setLevel(logging.CRITICAL)
    try:
        config = load_config(args.config) if args.config else None  # a wrong recipe fails before the long part
        with logging_redirect_tqdm():  # log lines print above the progress bar instead of through it
            report = prepare_media(args.videos, args.audios, args.frames, args.fps, args.workers, args.ffmpeg,
                                   progress=sys.stderr.isatty())
        print("\n".join(report.lines()))
        checked = check_recipe(config) if config else True
    except (VastError, OSError) as error:  # OSError: e.g. an output folder that cannot be written
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if checked and not report.of("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
