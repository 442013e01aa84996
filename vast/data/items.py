"""A clip's text + media sources -> an `Item`: the decoding every dataset kind shares.

Media sources are paths (annotation datasets) or in-memory shard members (`media.MediaBytes`).
A failure never raises here: it is recorded on the item (`Item.failed`), so that the loader in the
main process decides what it means (training: skip and count; evaluation and check_data: report).
Raising inside a loader worker would reach the user as a wrapped traceback instead of one line.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import torch

from vast.data import media
from vast.data.batch import Failure, Item, Sample
from vast.errors import DataError, MediaError
from vast.tasks import Modality


def item_rng(seed: int, epoch: int, index) -> random.Random:
    """The random draws of one item (frames, crop, caption choice): fixed by seed, epoch and the item."""
    return random.Random(zlib.crc32(f"{seed}:{epoch}:{index}".encode()))


@dataclass(frozen=True)
class MediaSpecs:
    """What one data entry decodes: which modalities, and how (frames, resolution, fbank slices)."""

    vision: media.VisionSpec
    audio: media.AudioSpec
    needs_vision: bool
    needs_audio: bool
    audio_missing: str  # "error" | "zeros"


def media_specs(entry, model_cfg) -> MediaSpecs:
    mean, std = media.vision_normalisation(model_cfg["vision_encoder_type"])
    modalities = entry.task.modalities
    return MediaSpecs(
        vision=media.VisionSpec(format=entry.vision_format, sample_num=entry.vision_sample_num,
                                resolution=int(model_cfg["vision_resolution"]),
                                transforms=entry.vision_transforms, mean=mean, std=std),
        audio=media.AudioSpec(sample_num=entry.audio_sample_num, melbins=int(model_cfg["audio_melbins"]),
                              target_length=int(model_cfg["audio_target_length"])),
        needs_vision=Modality.VISION in modalities, needs_audio=Modality.AUDIO in modalities,
        audio_missing=entry.audio_missing)


def failure_of(error: DataError) -> Failure:
    if isinstance(error, MediaError):
        return Failure(error.path, error.reason)
    return Failure("", str(error))


def _audio(find_source, specs: MediaSpecs, training: bool, rng: random.Random) -> torch.Tensor:
    """The clip's fbank slices; with `audio_missing: zeros`, silence when it has no audio at all."""
    try:
        return media.load_audio(find_source(), specs.audio, training, rng)
    except DataError as error:
        missing = not isinstance(error, MediaError) or "no audio stream" in error.reason
        if specs.audio_missing != "zeros" or not missing:
            raise
        spec = specs.audio  # the entry asked for it explicitly: silence stands in for a missing track
        return torch.zeros(spec.sample_num, spec.target_length, spec.melbins)


def decode_item(sample: Sample, find_vision, find_audio, specs: MediaSpecs, training: bool,
                rng: random.Random) -> Item:
    """Decode what the task needs. `find_vision` / `find_audio` are called to find each source, only
    when the task needs it, so a missing file is a failure of this item too."""
    item = Item(sample)
    try:
        if specs.needs_vision:
            item.vision = media.load_vision(find_vision(), specs.vision, training, rng, normalize=False)  # uint8
        if specs.needs_audio:
            item.audio = _audio(find_audio, specs, training, rng)
    except DataError as error:
        item.failed = failure_of(error)
        item.vision = item.audio = None
    if training:
        item.choice = rng.random()
    return item
