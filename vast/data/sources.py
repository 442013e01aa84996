"""Where media come from: files found by clip id, or files held in memory (shard members); opening
them with PyAV, and the segment sampling that frames and audio slices share.

A missing, empty or unopenable source is a ``MediaError`` that names it.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import av

from vast.errors import MediaError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".flv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg")


@dataclass(frozen=True)
class MediaBytes:
    """A media file held in memory (a shard member): its name, for messages, and its bytes."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


def check_source(source) -> None:
    if isinstance(source, MediaBytes):
        if not source.data:
            raise MediaError(source, "is empty (0 bytes)")
        return
    if not Path(source).is_file():
        raise MediaError(source, "file not found")
    if Path(source).stat().st_size == 0:
        raise MediaError(source, "is empty (0 bytes); re-create or remove it")


def find_media_file(folder, media_id: str, extensions) -> Path:
    """Return ``folder/<media_id><ext>`` for the first extension that exists.

    ``media_id`` may already carry one of the extensions. An extension of ``""`` matches
    ``folder/<media_id>`` itself, which is how frame folders are found.
    """
    folder = Path(folder)
    extensions = tuple(extensions)
    candidates = [folder / f"{media_id}{extension}" for extension in extensions]
    if Path(media_id).suffix.lower() in extensions:
        candidates.insert(0, folder / media_id)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(repr(extension) for extension in extensions)
    raise MediaError(folder / f"{media_id}.*", f"no media file for id {media_id!r} (tried extensions {tried})")


def segment_indices(num_items: int, sample_num: int, training: bool, rng: random.Random) -> list[int]:
    """Pick ``sample_num`` indices from ``range(num_items)``, one per contiguous near-equal segment.

    Training picks a random item of each segment; evaluation picks each segment's middle item.
    With fewer items than samples the last item repeats, so the result is always ``sample_num`` long.
    """
    if num_items <= 0:
        raise ValueError(f"cannot sample from {num_items} items")
    if sample_num <= 0:
        raise ValueError(f"sample_num must be at least 1, got {sample_num}")
    items = list(range(num_items)) + [num_items - 1] * max(0, sample_num - num_items)
    size, remainder = divmod(len(items), sample_num)
    segments = [
        items[i * size + min(i, remainder) : (i + 1) * size + min(i + 1, remainder)]
        for i in range(sample_num)
    ]
    if training:
        return [rng.choice(segment) for segment in segments]
    return [segment[(len(segment) + 1) // 2 - 1] for segment in segments]


def open_container(path) -> av.container.InputContainer:
    check_source(path)
    # Tags are never read here, and PyAV's default strict decoding would turn one non-UTF-8 title
    # (common in older AVI/MKV files) into a UnicodeDecodeError for the whole file.
    source = io.BytesIO(path.data) if isinstance(path, MediaBytes) else str(path)
    try:
        container = av.open(source, metadata_errors="replace")
    except av.FFmpegError as error:
        reason = f"cannot be opened as media ({error.strerror}); it is corrupt, truncated or not audio/video"
        raise MediaError(path, reason) from error
    if not container.streams:
        # A file cut off inside its header opens but lists no streams; "no video stream" would mislead.
        container.close()
        raise MediaError(path, "has no audio or video streams; it is truncated or not a media file")
    return container


def probe_duration(path) -> float:
    """A media file's duration in seconds, from its container."""
    with open_container(path) as container:
        if container.duration:
            return container.duration / 1e6
        streams = [s for s in container.streams if s.duration and s.time_base]
        if streams:
            return max(float(s.duration * s.time_base) for s in streams)
    raise MediaError(path, "has no known duration; it is truncated or a stream without an index")
