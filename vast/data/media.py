"""Turn media files into model-ready tensors: sampled video frames, images, and audio fbank slices.

Decoding is PyAV for video and audio (video frames: `vast.data.video`), PIL for still images;
resizing and normalisation use torchvision's v2 functional ops and the filterbank is torchaudio's
Kaldi-compatible fbank. Every failure a user can cause (a missing, unreadable or empty file) is a
``MediaError`` that names the file; a broken sample is never swapped for another one. A source is a
path or a ``MediaBytes`` (a file held in memory, e.g. a shard member), decoded the same way
(`vast.data.sources`). This module is the one the datasets and the API import: the names of
`sources` and `video` they use are available here too.
"""

from __future__ import annotations

import io
import logging
import math
import random
import re
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torchaudio
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from vast.data.sources import (AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaBytes, check_source,
                               find_media_file, open_container, probe_duration, segment_indices)
from vast.data.video import read_video_frames
from vast.errors import DataError, MediaError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Filterbank statistics that BEATs was trained with; the audio encoder expects inputs scaled this way.
AUDIO_MEAN = 15.41663
AUDIO_STD = 6.55582
SAMPLE_RATE = 16000

logger = logging.getLogger(__name__)


def read_image(path) -> torch.Tensor:
    """Load one image as uint8 [1, 3, H, W] RGB."""
    check_source(path)
    try:
        with Image.open(io.BytesIO(path.data) if isinstance(path, MediaBytes) else path) as image:
            pixels = np.asarray(image.convert("RGB"))  # [H, W, 3]
    except OSError as error:  # PIL.UnidentifiedImageError is an OSError too
        raise MediaError(path, f"cannot be read as an image ({error})") from error
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def read_frame_folder(folder, sample_num: int, training: bool, rng: random.Random) -> torch.Tensor:
    """Sample ``sample_num`` frames from a folder of image files (natural order): uint8 [F, 3, H, W]."""
    return sample_images(frame_folder_images(folder), sample_num, training, rng)


def frame_folder_images(folder) -> list[Path]:
    """The image files of a frame folder in natural order (frame2 before frame10)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MediaError(folder, "frame folder not found")
    image_paths = sorted(
        (path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS), key=_natural_key
    )
    if not image_paths:
        raise MediaError(folder, f"frame folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return image_paths


def sample_images(sources: list, sample_num: int, training: bool, rng: random.Random) -> torch.Tensor:
    """Sample ``sample_num`` of a clip's ordered frame images (paths or MediaBytes): uint8 [F, 3, H, W]."""
    wanted = segment_indices(len(sources), sample_num, training, rng)
    loaded = {index: read_image(sources[index])[0] for index in set(wanted)}
    first_shape = loaded[wanted[0]].shape
    for index, frame in loaded.items():
        if frame.shape != first_shape:
            raise MediaError(
                sources[index], f"frame size {tuple(frame.shape[1:])} differs from {tuple(first_shape[1:])}"
            )
    return torch.stack([loaded[index] for index in wanted])


def _random_resized_crop_box(height: int, width: int, scale, ratio, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling, drawn from ``rng`` so one clip shares one box."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_width = round((target_area * aspect) ** 0.5)
        crop_height = round((target_area / aspect) ** 0.5)
        if 0 < crop_width <= width and 0 < crop_height <= height:
            return rng.randint(0, height - crop_height), rng.randint(0, width - crop_width), crop_height, crop_width
    # No sampled box fit (e.g. a wide frame with a square ratio): fall back to the largest centred box.
    input_ratio = width / height
    if input_ratio < ratio[0]:
        crop_width, crop_height = width, round(width / ratio[0])
    elif input_ratio > ratio[1]:
        crop_width, crop_height = round(height * ratio[1]), height
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


class VisionTransform:
    """Resize/crop/flip a uint8 clip to [F, 3, R, R]; one random draw covers the whole clip.
    Normalisation is `normalize_frames`, a step of its own (loaders leave it to the batch)."""

    NAMES = ("none", "crop_flip")
    CROP_SCALE = (0.8, 1.0)
    CROP_RATIO = (1.0, 1.0)

    def __init__(self, resolution: int, transforms: str, training: bool):
        if transforms not in self.NAMES:
            raise DataError(f"unknown vision transforms {transforms!r}; choose one of {', '.join(self.NAMES)}")
        self.resolution = resolution
        self.transforms = transforms
        self.training = training

    def __call__(self, frames: torch.Tensor, rng: random.Random) -> torch.Tensor:
        size = [self.resolution, self.resolution]
        if self.transforms == "none":
            frames = TF.resize(frames, size, antialias=True)
        elif self.training:
            top, left, height, width = _random_resized_crop_box(
                frames.shape[-2], frames.shape[-1], self.CROP_SCALE, self.CROP_RATIO, rng
            )
            frames = TF.resize(TF.crop(frames, top, left, height, width), size, antialias=True)
            if rng.random() < 0.5:
                frames = TF.hflip(frames)
        else:
            frames = TF.center_crop(TF.resize(frames, self.resolution, antialias=True), size)
        return frames  # uint8 [F, 3, R, R]


def normalize_frames(frames: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 frames [..., 3, H, W] -> float32 scaled to [0, 1] and normalised per channel. Loaders
    hand uint8 over (a quarter of the bytes between processes and to the GPU) and batches call this
    on the device; the result is the same element by element wherever it runs on the CPU."""
    frames = TF.to_dtype(frames, torch.float32, scale=True)
    return TF.normalize(frames, list(mean), list(std), inplace=True)  # in place: to_dtype made a copy


def _read_pcm16_wav(path, sample_rate: int) -> torch.Tensor | None:
    """A 16-bit PCM WAV already at ``sample_rate``, read directly: mono float32 [S], the values PyAV
    gives (s16 / 32768, channels averaged), without its per-file probing. None for any other file."""
    data = path.data if isinstance(path, MediaBytes) else None
    if data is not None and not data.startswith(b"RIFF"):
        return None
    try:
        with wave.open(io.BytesIO(data) if data is not None else str(path), "rb") as handle:
            if handle.getsampwidth() != 2 or handle.getframerate() != sample_rate:
                return None
            channels, promised = handle.getnchannels(), handle.getnframes()
            pcm = np.frombuffer(handle.readframes(promised), dtype="<i2")
    except (wave.Error, EOFError, OSError):
        return None  # not a PCM WAV: PyAV decodes it, or names what is wrong
    pcm = pcm[: len(pcm) - len(pcm) % channels].reshape(-1, channels)
    if len(pcm) == 0:
        return None
    if len(pcm) < promised:
        logger.warning("%s: audio decoding stopped early (the file ends before its header says)", path)
    samples = np.ascontiguousarray((pcm.astype(np.float32) / 32768).T)  # [channels, S], as PyAV's planes
    return torch.from_numpy(samples.mean(axis=0))


def load_waveform(path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode the first audio stream of any media file to float32 mono [S] at ``sample_rate``."""
    if str(path).lower().endswith(".wav") and (direct := _read_pcm16_wav(path, sample_rate)) is not None:
        return direct
    chunks = []
    with open_container(path) as container:
        if not container.streams.audio:
            raise MediaError(path, "has no audio stream; use a file with sound or drop audio from this task")
        stream = container.streams.audio[0]
        # Keep the channels and average them ourselves: FFmpeg's own stereo-to-mono downmix scales
        # each channel by 1/sqrt(2), which lifts identical channels past 1.0 and disagrees with torchaudio.
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        try:
            for frame in container.decode(stream):
                chunks += [resampled.to_ndarray() for resampled in resampler.resample(frame)]  # [channels, n]
        except av.FFmpegError as error:
            # Same policy as video: a truncated tail ends the stream, the audio before it is kept.
            logger.warning("%s: audio decoding stopped early (%s)", path, error.strerror)
        chunks += [resampled.to_ndarray() for resampled in resampler.resample(None)]
    if sum(chunk.shape[1] for chunk in chunks) == 0:
        raise MediaError(path, "has an audio stream but no decodable samples")
    return torch.from_numpy(np.concatenate(chunks, axis=1).mean(axis=0))


def compute_fbank(waveform: torch.Tensor, melbins: int, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Kaldi log-mel filterbank of a mono waveform [S], normalised for BEATs: [T, melbins]."""
    window = int(sample_rate * 0.025)
    if waveform.numel() < window:
        raise ValueError(f"audio has {waveform.numel()} samples, shorter than one 25 ms window ({window})")
    # Kaldi features are defined on 16-bit integer amplitudes.
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform[None] * 2**15,
        num_mel_bins=melbins,
        sample_frequency=sample_rate,
        frame_length=25,
        frame_shift=10,
    )
    return (fbank - AUDIO_MEAN) / (2 * AUDIO_STD)


def slice_fbank(
    fbank: torch.Tensor, sample_num: int, target_length: int, training: bool, rng: random.Random
) -> torch.Tensor:
    """Cut a filterbank [T, M] into ``sample_num`` windows of ``target_length`` rows: [C, target_length, M]."""
    num_rows = fbank.shape[0]
    # Pad with silence so there are at least sample_num whole windows and the tail fills a window.
    padding = max(target_length * sample_num - num_rows, target_length - num_rows % target_length)
    padded = torch.nn.functional.pad(fbank, (0, 0, 0, padding))
    windows = padded.reshape(-1, target_length, fbank.shape[1])  # [T' / target_length, target_length, M]
    chosen = segment_indices(windows.shape[0], sample_num, training, rng)
    return windows[chosen]


@dataclass(frozen=True)
class VisionSpec:
    """How to read and shape the vision input of one dataset."""

    format: str  # "video_rawvideo" | "video_frame" | "image_rawimage"
    sample_num: int
    resolution: int = 224
    transforms: str = "none"
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD


@dataclass(frozen=True)
class AudioSpec:
    """How many fbank windows to take from a clip's audio, and their size."""

    sample_num: int = 1
    melbins: int = 64
    target_length: int = 1024


def _read_single_image(path, sample_num: int, training: bool, rng: random.Random) -> torch.Tensor:
    return read_image(path)


VISION_READERS = {
    "video_rawvideo": read_video_frames,
    "video_frame": read_frame_folder,
    "image_rawimage": _read_single_image,
}


def vision_normalisation(vision_encoder_type: str) -> tuple[tuple, tuple]:
    """(mean, std) of the frames: CLIP's for the CLIP/EVA towers, ImageNet's otherwise."""
    if str(vision_encoder_type).startswith(("clip", "evaclip", "eva")):
        return CLIP_MEAN, CLIP_STD
    return IMAGENET_MEAN, IMAGENET_STD


def load_vision(path, spec: VisionSpec, training: bool, rng: random.Random, normalize: bool = True) -> torch.Tensor:
    """Read a video, frame folder or image per ``spec`` and transform it: float32 [F, 3, R, R]
    (uint8 with ``normalize=False``; see `normalize_frames`). ``path`` may also be a list of frame
    images (a clip stored as pre-sampled frames)."""
    reader = sample_images if isinstance(path, list) else VISION_READERS.get(spec.format)
    if reader is None:
        raise DataError(f"unknown vision format {spec.format!r}; choose one of {', '.join(VISION_READERS)}")
    transform = VisionTransform(spec.resolution, spec.transforms, training)
    frames = transform(reader(path, spec.sample_num, training, rng), rng)  # uint8 [F, 3, R, R]
    return normalize_frames(frames, spec.mean, spec.std) if normalize else frames


def load_audio(path, spec: AudioSpec, training: bool, rng: random.Random) -> torch.Tensor:
    """Read a file's audio and cut its fbank per ``spec``: float32 [C, target_length, melbins]."""
    waveform = load_waveform(path)
    try:
        fbank = compute_fbank(waveform, spec.melbins)  # [T, melbins]
    except ValueError as error:
        raise MediaError(path, f"audio too short ({error})") from error
    return slice_fbank(fbank, spec.sample_num, spec.target_length, training, rng)
