"""Sampled frames of a video file: uint8 [F, 3, H, W] for the frame indices a sampler picks.

Short clips are decoded sequentially from the start. Long videos seek to each far-off wanted frame
when their timestamps name frame indices reliably (constant rate, checked); any doubt falls back to
sequential decoding. A truncated file is sampled among the frames that do decode.
"""

from __future__ import annotations

import logging
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch

from vast.data.sources import open_container, segment_indices
from vast.errors import MediaError

# A wanted frame more than this many frames past the last decoded one is reached by seeking. It is
# x264's default maximum keyframe interval, so for most encodes the keyframe a seek lands on lies past
# the frames already decoded and seeking never decodes more than carrying on would; clips this short
# are decoded sequentially, exactly as before seeking existed.
SEEK_MIN_GAP = 250
# Seek this many frames early: AVI and MPEG-TS find keyframes by decode time, which B-frames put up to
# 16 frames (H.264's deepest reordering) before display time, so a seek to the exact time can land late.
REORDER_MARGIN = 16
# A frame is on the grid when its timestamp is within this many frame durations of a grid point.
GRID_SLACK = Fraction(1, 4)

logger = logging.getLogger(__name__)


def _count_video_frames(path) -> int:
    with open_container(path) as container:
        return _count_frames_in(path, container)[0]


def _count_frames_in(path, container) -> tuple[int, bool]:
    """(frame count, whether counting read the file through): the container's count when it has one;
    WebM and Matroska usually leave it at 0, and then the packets are counted (demuxed, not decoded)."""
    if not container.streams.video:
        raise MediaError(path, "has no video stream")
    stream = container.streams.video[0]
    if stream.frames > 0:
        return stream.frames, False
    packet_count = 0
    try:
        for packet in container.demux(stream):
            packet_count += packet.size > 0  # the final empty packet only flushes the decoder
    except av.FFmpegError:
        pass  # a truncated file; decoding finds the true count
    return packet_count, True


def _decode_video_frames(path, wanted: list[int], container=None) -> tuple[dict[int, np.ndarray], int]:
    """Decode up to the last wanted index; return the wanted frames (rgb24 [H, W, 3]) and the count
    decoded. `container`: one already open at the start of the file (it stays open)."""
    needed, last = set(wanted), max(wanted)
    kept: dict[int, np.ndarray] = {}
    decoded = 0
    size = None
    with nullcontext(container) if container is not None else open_container(path) as container:
        # No frame threading (thread_type "AUTO"): once torchvision installs PyAV's log callback, a frame
        # thread logging a decode error while the codec is freed under the GIL deadlocks the process.
        stream = container.streams.video[0]
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                size = size or (frame.width, frame.height)
                if index in needed:
                    # Reformatting to the first frame's size keeps a mid-stream resolution change stackable.
                    kept[index] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                if index == last:
                    break
        except av.FFmpegError as error:
            logger.warning("%s: video decoding stopped after %d frames (%s)", path, decoded, error.strerror)
    return kept, decoded


@dataclass(frozen=True)
class _FrameGrid:
    """Constant-rate timing: frame ``i`` is shown at pts ``start + i * ticks`` (stream time_base units)."""

    start: int
    ticks: Fraction

    def pts(self, index: int) -> int:
        return math.floor(self.start + index * self.ticks)

    def index(self, pts: int | None) -> int | None:
        """The frame index at ``pts``, or None when pts is missing or not within GRID_SLACK of a grid point."""
        if pts is None:
            return None
        position = (pts - self.start) / self.ticks
        index = round(position)
        return index if abs(position - index) <= GRID_SLACK else None


def _frame_grid(container, stream, frame_count: int, first_pts: int | None) -> _FrameGrid | None:
    """The stream's frame grid, or None when timestamps may not name frame indices (variable or unknown rate).

    The sequential path numbers frames by counting them; a timestamp names the same frame only if every
    frame sits on one constant-rate grid, so the last frame must sit exactly at index frame_count - 1.
    That catches a variable rate and even a one-frame gap anywhere, where average_rate would not: MP4
    derives it from the frame count and duration, so its grid always ends on the last frame. base_rate
    is the rate the timestamps themselves step at. The grid starts at the first decoded frame, not at
    start_time: AVI reports the first packet's decode time there, a frame early when B-frames reorder.
    Finding the last timestamp moves the demuxer to the end; the caller must seek before decoding.
    """
    rate, time_base = stream.base_rate, stream.time_base
    if not rate or not time_base or first_pts is None:
        return None
    grid = _FrameGrid(first_pts, 1 / (rate * time_base))
    # Demuxing (without decoding) from the last keyframe to the end gives the last frame's timestamp.
    container.seek(grid.pts(frame_count - 1), stream=stream, backward=True)
    last_pts = max((packet.pts for packet in container.demux(stream) if packet.pts is not None), default=None)
    return grid if grid.index(last_pts) == frame_count - 1 else None


def _needs_seeking(wanted: list[int]) -> bool:
    """Whether some wanted frame lies more than SEEK_MIN_GAP frames past the previous one (or the start)."""
    positions = [-1, *sorted(set(wanted))]
    return any(later - earlier > SEEK_MIN_GAP for earlier, later in zip(positions, positions[1:]))


def _seek_video_frames(path, wanted: list[int], frame_count: int) -> tuple[dict[int, np.ndarray], int] | None:
    """Decode the wanted frames by seeking near each far-off one: (rgb24 frames by index, count decoded).

    Sequential decoding of a frame near the end of a long video decodes the whole video; here a wanted
    frame more than SEEK_MIN_GAP frames ahead is reached by seeking to the keyframe before it instead.
    Frames are identified by timestamp, so this returns None (decode sequentially instead) whenever a
    timestamp might not name the frame that counting would: an unknown or variable frame rate, a frame
    off the grid or out of step with its predecessor, a seek that lands past its target, the stream
    ending first (a truncated file), or a decode error.
    """
    kept: dict[int, np.ndarray] = {}
    with open_container(path) as container:
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
            grid = None if first is None else _frame_grid(container, stream, frame_count, first.pts)
            if grid is None:
                return None
            # Like the sequential path, every frame is converted at the first frame's size.
            size = (first.width, first.height)
            decoded, frames, position = 1, None, None  # the decode iterator and the index of its last frame
            for target in sorted(set(wanted)):
                if frames is None or target - position > SEEK_MIN_GAP:
                    container.seek(grid.pts(max(0, target - REORDER_MARGIN)), stream=stream, backward=True)
                    frames, position = container.decode(stream), None
                while position != target:
                    current = next(frames, None)
                    if current is None:
                        return None
                    decoded += 1
                    index = grid.index(current.pts)
                    if index is None or index > target or (position is not None and index != position + 1):
                        return None
                    position = index
                kept[target] = current.to_ndarray(format="rgb24", width=size[0], height=size[1])
        except av.FFmpegError as error:
            logger.info("%s: seeking failed (%s); decoding sequentially", path, error.strerror)
            return None
    return kept, decoded


def read_video_frames(path, sample_num: int, training: bool, rng: random.Random) -> torch.Tensor:
    """Decode ``sample_num`` frames spread over the whole video: uint8 [F, 3, H, W].

    Clips whose wanted frames are close together are decoded sequentially from the start; long videos
    seek to each far-off wanted frame when their timestamps allow it (see ``_seek_video_frames``).
    """
    with open_container(path) as container:  # opened once for counting and a sequential decode
        frame_count, read_through = _count_frames_in(path, container)
        if frame_count == 0:
            raise MediaError(path, "has a video stream with no frames; the file is likely truncated")
        wanted = segment_indices(frame_count, sample_num, training, rng)
        seeked = _seek_video_frames(path, wanted, frame_count) if _needs_seeking(wanted) else None
        if seeked is None:
            kept, decoded = _decode_video_frames(path, wanted, None if read_through else container)
    if seeked is not None:
        kept, _ = seeked
    else:
        if decoded <= max(wanted):
            # The container promised more frames than decode (a truncated file): sample the real ones.
            if decoded == 0:
                raise MediaError(path, "has a video stream but no decodable frames; the file is likely corrupt")
            wanted = segment_indices(decoded, sample_num, training, rng)
            kept, _ = _decode_video_frames(path, wanted)
    frames = np.stack([kept[index] for index in wanted])  # [F, H, W, 3]
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()



def read_window_frames(path, start: float, end: float, sample_num: int) -> torch.Tensor:
    """The frames on screen at the middles of ``sample_num`` equal parts of [start, end) seconds:
    uint8 [F, 3, H, W]. Seeks to ``start`` and decodes to the last of them (a clip of a long video)."""
    targets = [start + (k + 0.5) * (end - start) / sample_num for k in range(sample_num)]
    chosen: list[np.ndarray] = []
    with open_container(path) as container:
        if not container.streams.video:
            raise MediaError(path, "has no video stream")
        stream = container.streams.video[0]
        if start > 0 and stream.time_base:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        previous, size = None, None
        try:
            for frame in container.decode(stream):
                size = size or (frame.width, frame.height)
                while len(chosen) < sample_num and frame.time is not None and frame.time > targets[len(chosen)]:
                    # on screen at the target: the last frame that started at or before it
                    shown = previous if previous is not None else frame
                    chosen.append(shown.to_ndarray(format="rgb24", width=size[0], height=size[1]))
                if len(chosen) == sample_num:
                    break
                previous = frame
        except av.FFmpegError as error:
            logger.warning("%s: video decoding stopped at %.2f s (%s)", path, previous.time if previous else 0,
                           error.strerror)
        reached_window = bool(chosen) or (previous is not None and (previous.time or 0) >= start)
        if len(chosen) < sample_num and reached_window:
            last = previous.to_ndarray(format="rgb24", width=size[0], height=size[1])
            chosen += [last] * (sample_num - len(chosen))  # the window runs past the end of the video
    if len(chosen) < sample_num:
        raise MediaError(path, f"has no video frames between {start:.2f} s and {end:.2f} s")
    return torch.from_numpy(np.stack(chosen)).permute(0, 3, 1, 2).contiguous()
