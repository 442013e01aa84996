"""The first two labeling stages: source videos -> clips (`ClipSplitter`), clips -> frames and audio
(`ClipDecoder`).

VAST-27M's clips are 5-30 s cuts of longer videos. `ClipSplitter` cuts each source into such clips
by fixed windows or at scene changes (ffmpeg's scene score), or keeps each file as one clip when the
inputs already are clips (`mode: none`). A clip is a record `{"clip_id", "source", "start", "end"}`
(seconds); nothing is re-encoded: `ClipDecoder` reads the window it needs from the source, the
frames a captioner looks at (the middles of equal parts of the clip) and the 16 kHz mono audio.
A source or clip that cannot be read keeps its record with an `error` (the file and the reason),
so the executor can report it: nothing is dropped silently.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vast.data import media
from vast.data.video import read_window_frames
from vast.errors import ConfigError, MediaError
from vast.labeling.stages import Resources, Stage

SPLIT_MODES = ("none", "fixed", "scenes")


@dataclass(frozen=True)
class SplitConfig:
    mode: str = "none"
    clip_seconds: float = 10.0  # fixed windows
    min_seconds: float = 5.0
    max_seconds: float = 30.0
    scene_threshold: float = 0.3  # ffmpeg's scene score (0-1) above which a frame starts a new scene

    def __post_init__(self):
        if self.mode not in SPLIT_MODES:
            raise ConfigError(f"clip split mode {self.mode!r}: choose one of {', '.join(SPLIT_MODES)}")
        if not 0 < self.min_seconds <= self.clip_seconds <= self.max_seconds:
            raise ConfigError("clip lengths: need 0 < min_seconds <= clip_seconds <= max_seconds, got "
                              f"{self.min_seconds}, {self.clip_seconds}, {self.max_seconds}")


def scene_cuts(path, threshold: float) -> list[float]:
    """Times (seconds) where ffmpeg's scene-change score exceeds `threshold`."""
    result = subprocess.run(["ffmpeg", "-hide_banner", "-nostats", "-i", str(path), "-an", "-filter:v",
                             f"select='gt(scene,{threshold})',showinfo", "-f", "null", "-"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise MediaError(path, f"scene detection failed ({result.stderr.strip().splitlines()[-1:]})")
    return [float(t) for t in re.findall(r"pts_time:([0-9.]+)", result.stderr)]


def split_spans(duration: float, cuts: list[float], config: SplitConfig) -> list[tuple[float, float]]:
    """(start, end) of each clip: pieces between cuts, short ones merged into a neighbour, long ones
    split into equal parts of at most `max_seconds`. A source shorter than `min_seconds` is one clip."""
    bounds = [0.0] + sorted(t for t in cuts if 0 < t < duration) + [duration]
    pieces = [[a, b] for a, b in zip(bounds, bounds[1:]) if b > a]
    merged: list[list[float]] = []
    for piece in pieces:
        if merged and (merged[-1][1] - merged[-1][0] < config.min_seconds or piece[1] - piece[0] < config.min_seconds):
            merged[-1][1] = piece[1]  # a piece too short to be a clip joins its neighbour
        else:
            merged.append(piece)
    spans = []
    for start, end in merged:
        parts = max(1, -int(-(end - start) // config.max_seconds))
        step = (end - start) / parts
        spans += [(round(start + k * step, 3), round(start + (k + 1) * step, 3)) for k in range(parts)]
    return spans


def clip_id(base: str, start: float, end: float, whole: bool) -> str:
    """A whole file is its own clip (`base`); a window adds its start and end in milliseconds."""
    return base if whole else f"{base}_{round(start * 1000):08d}_{round(end * 1000):08d}"


class ClipSplitter(Stage):
    """Labeling stage: `{"source": path, "source_id"?}` records -> one record per clip of each source.
    Clip ids start with `source_id` (default: the file name without extension)."""

    name = "split"
    resources = Resources(cpus=1.0)

    def __init__(self, config: SplitConfig | None = None):
        self.config = config or SplitConfig()

    def spans(self, path: Path) -> list[tuple[float, float]]:
        duration = media.probe_duration(path)
        if self.config.mode == "none":
            return [(0.0, round(duration, 3))]
        if self.config.mode == "fixed":
            step = self.config.clip_seconds
            cuts = [k * step for k in range(1, int(duration // step) + 1)]
        else:
            cuts = scene_cuts(path, self.config.scene_threshold)
        return split_spans(duration, cuts, self.config)

    def __call__(self, batch: list[dict]) -> list[dict]:
        clips = []
        for record in batch:
            source = Path(record["source"])
            base = record.get("source_id") or source.stem
            try:
                spans = self.spans(source)
            except MediaError as error:
                clips.append({"clip_id": base, "source": str(source), "error": str(error)})
                continue
            whole = self.config.mode == "none"
            clips += [{"clip_id": clip_id(base, start, end, whole), "source": str(source), "start": start,
                       "end": end, "duration": round(end - start, 3), "whole": len(spans) == 1} for start, end in spans]
        return clips


@dataclass(frozen=True)
class DecodeConfig:
    frames: int = 8  # frames a vision captioner looks at
    audio: bool = True


class ClipDecoder(Stage):
    """Labeling stage: clip records -> `frames` (uint8 [F, 3, H, W]) and `waveform` (16 kHz mono)."""

    name = "decode"
    resources = Resources(cpus=1.0, memory_gb=2.0)

    def __init__(self, config: DecodeConfig | None = None):
        self.config = config or DecodeConfig()
        self._audio_source, self._audio = None, None  # clips of one source come in a row: decode it once

    def _waveform(self, source: str, start: float, end: float):
        if source != self._audio_source:
            self._audio = media.load_waveform(source)
            self._audio_source = source
        rate = media.SAMPLE_RATE
        return self._audio[int(start * rate):int(end * rate)].numpy()

    def __call__(self, batch: list[dict]) -> list[dict]:
        for record in batch:
            if record.get("error"):
                continue
            try:
                record["frames"] = read_window_frames(record["source"], record["start"], record["end"],
                                                      self.config.frames)
                if self.config.audio:
                    record["waveform"] = self._waveform(record["source"], record["start"], record["end"])
            except MediaError as error:
                record["error"] = str(error)  # e.g. no audio stream: the clip is reported, not half-labeled
                record.pop("frames", None)
        return batch
