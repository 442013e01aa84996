"""JSON annotation datasets (every format of DESIGN 2.4) that decode media and collate typed batches.

Formats accepted, one JSON list per file:
- retrieval / caption: `{"video_id"|"image_id"|"id"|"clip_id", "desc"|"caption": str | [str], "subtitle"?}`
- QA: `{"video_id", "question", "answer", "subtitle"?}`, question/answer either strings (one question a
  row) or equal-length lists (several questions for one video, as in the released test files)
- VAST-27M: `{"clip_id", "vision_cap": [...], "audio_cap": [...], "subtitle", "vast_cap"}`
- captioner input: `{"video_id"}` only (ids to label; no text)

The whole file is checked when the dataset is built, so a malformed row is reported (file, row,
id, what is wrong) before any training starts.
"""

from __future__ import annotations

import logging
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vast.config import DataEntry, read_json, resolve_path
from vast.errors import ConfigError, DataError, MediaError
from vast.tasks import Modality, TaskSpec, TaskType
from vast.data import media

logger = logging.getLogger(__name__)

ID_KEYS = ("video_id", "clip_id", "image_id", "id")
CAPTION_KEYS = ("desc", "caption")


@dataclass
class Sample:
    """One annotation row, normalised: every caption kind as a list, QA as parallel lists."""

    id: str
    captions: list[str] = field(default_factory=list)
    vision_captions: list[str] = field(default_factory=list)
    audio_captions: list[str] = field(default_factory=list)
    omni_captions: list[str] = field(default_factory=list)
    subtitle: str | None = None
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)


def _as_text_list(value, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise DataError(f"{where}: expected a string or a list of strings, got {value!r:.80}")
    return items


def normalise_row(row, where: str) -> Sample:
    """Turn one annotation row of any supported format into a Sample, or fail naming the row."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {row!r:.80}")
    id_key = next((k for k in ID_KEYS if k in row), None)
    if id_key is None:
        raise DataError(f"{where}: no id key (one of {', '.join(ID_KEYS)})")
    sample = Sample(id=str(row[id_key]))
    where = f"{where} ({sample.id})"
    caption_key = next((k for k in CAPTION_KEYS if k in row), None)
    if caption_key is not None:
        sample.captions = _as_text_list(row[caption_key], f"{where}.{caption_key}")
        if not sample.captions:
            raise DataError(f"{where}.{caption_key}: empty caption list")
    for key, attr in (("vision_cap", "vision_captions"), ("audio_cap", "audio_captions"), ("vast_cap", "omni_captions")):
        if key in row:
            setattr(sample, attr, _as_text_list(row[key], f"{where}.{key}"))
    if "subtitle" in row:
        if not isinstance(row["subtitle"], str):
            raise DataError(f"{where}.subtitle: expected a string, got {row['subtitle']!r:.80}")
        sample.subtitle = row["subtitle"]
    if "question" in row or "answer" in row:
        questions = _as_text_list(row.get("question"), f"{where}.question")
        answers = _as_text_list(row.get("answer"), f"{where}.answer")
        if len(questions) != len(answers):
            raise DataError(f"{where}: {len(questions)} questions but {len(answers)} answers")
        sample.questions, sample.answers = questions, answers
    return sample


def load_annotations(path: str | Path) -> list[Sample]:
    resolved = resolve_path(path)
    rows = read_json(resolved, "annotation file")
    if isinstance(rows, dict) and "annotations" in rows:
        raise DataError(f"{resolved}: this is a COCO-style reference file; give it as 'annfile', not 'txt'")
    if not isinstance(rows, list):
        raise DataError(f"{resolved}: an annotation file is a JSON list of objects")
    if not rows:
        raise DataError(f"{resolved}: the annotation file is empty")
    return [normalise_row(row, f"{resolved} row {i}") for i, row in enumerate(rows)]


def texts_for_group(sample: Sample, modalities: tuple[Modality, ...]) -> list[str]:
    """The captions that describe a group: vision captions for tv, audio captions for ta, the omni
    caption for groups of two or more modalities, when the corpus has them; otherwise `desc`."""
    if len(modalities) > 1 and sample.omni_captions:
        return sample.omni_captions
    if modalities == (Modality.VISION,) and sample.vision_captions:
        return sample.vision_captions
    if modalities == (Modality.AUDIO,) and sample.audio_captions:
        return sample.audio_captions
    return sample.captions or sample.omni_captions or sample.vision_captions or sample.audio_captions


@dataclass
class Batch:
    """A collated batch. Text fields are per video; in test batches `captions` holds every reference
    caption flattened, with `caption_ids` giving the video each belongs to (for retrieval scoring)."""

    dataset: str
    task: TaskSpec
    ids: list[str]
    captions: list[str] | None = None
    caption_ids: list[str] | None = None
    vision_captions: list[str] | None = None
    audio_captions: list[str] | None = None
    omni_captions: list[str] | None = None
    subtitles: list[str] | None = None
    questions: list[str] | None = None
    answers: list[str] | None = None
    question_ids: list[str] | None = None
    question_video_index: list[int] | None = None  # which video of the batch each question is about
    vision: torch.Tensor | None = None  # [B, F, 3, H, W]
    audio: torch.Tensor | None = None  # [B, C, T, M]
    skipped: list[str] = field(default_factory=list)  # media paths that failed to decode (training only)
    # test batches: group name -> (every caption of the group's kind, the clip id of each)
    group_captions: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def texts_for(self, group) -> list[str] | None:
        """The captions of a group in a training batch, one per clip (see `texts_for_group`)."""
        modalities = tuple(group.modalities)
        if len(modalities) > 1 and self.omni_captions is not None:
            return self.omni_captions
        if modalities == (Modality.VISION,) and self.vision_captions is not None:
            return self.vision_captions
        if modalities == (Modality.AUDIO,) and self.audio_captions is not None:
            return self.audio_captions
        for texts in (self.captions, self.omni_captions, self.vision_captions, self.audio_captions):
            if texts is not None:
                return texts
        return None

    def to(self, device) -> "Batch":
        for name in ("vision", "audio"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device, non_blocking=True))
        return self


class AnnotationDataset(Dataset):
    """A `type: annoindexed` dataset: annotation rows + media folders, decoded on access."""

    def __init__(self, entry: DataEntry, model_cfg, seed: int = 0):
        self.entry = entry
        self.training = entry.training
        self.task = entry.task
        self.seed = seed
        self.epoch = 0
        self.samples = load_annotations(entry.txt)
        modalities = entry.task.modalities
        self.needs_vision = Modality.VISION in modalities
        self.needs_audio = Modality.AUDIO in modalities
        self.needs_subtitle = Modality.SUBTITLE in modalities
        self.vision_dir = resolve_path(entry.vision) if entry.vision else None
        self.audio_dir = resolve_path(entry.audio) if entry.audio else None
        if (self.needs_vision or (self.needs_audio and not self.audio_dir)) and self.vision_dir is None:
            raise ConfigError(f"{entry.where}: task '{entry.task}' needs 'vision' (the media folder)")
        mean, std = media.vision_normalisation(model_cfg.get("vision_encoder_type", ""))
        self.vision_spec = media.VisionSpec(
            format=entry.vision_format, sample_num=entry.vision_sample_num,
            resolution=int(model_cfg.get("vision_resolution", 224)),
            transforms=entry.vision_transforms, mean=mean, std=std,
        )
        self.audio_spec = media.AudioSpec(
            sample_num=entry.audio_sample_num, melbins=int(model_cfg.get("audio_melbins", 64)),
            target_length=int(model_cfg.get("audio_target_length", 1024)),
        )
        self._check_text_fields()

    def _check_text_fields(self) -> None:
        where = f"{self.entry.where}: {self.entry.txt}"
        types = self.task.types
        for i, sample in enumerate(self.samples):
            row = f"{where} row {i} ({sample.id})"
            if self.needs_subtitle and sample.subtitle is None:
                raise DataError(f"{row}: no 'subtitle' but task '{self.task}' uses subtitles (s); "
                                "add subtitles (e.g. with the ASR labeling step) or drop 's' from the task")
            if TaskType.QA in types and not sample.questions:
                raise DataError(f"{row}: task '{self.task}' is QA but the row has no 'question'/'answer'")
            if self.training and TaskType.QA not in types and not texts_for_group(sample, self.task.modalities):
                raise DataError(f"{row}: no caption ('desc', 'caption' or VAST-27M captions) to train on")

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> random.Random:
        return random.Random(zlib.crc32(f"{self.seed}:{self.epoch}:{index}".encode()))

    def vision_path(self, sample: Sample) -> Path:
        fmt = self.vision_spec.format
        if fmt == "video_frame":
            folder = self.vision_dir / sample.id
            if not folder.is_dir():
                raise DataError(f"frame folder not found: {folder} (dataset {self.entry.name})")
            return folder
        extensions = media.IMAGE_EXTENSIONS if fmt == "image_rawimage" else media.VIDEO_EXTENSIONS
        return media.find_media_file(self.vision_dir, sample.id, extensions)

    def audio_path(self, sample: Sample) -> Path:
        """The clip's own audio file if the audio folder has one, else the video's audio track."""
        if self.audio_dir is not None:
            try:
                return media.find_media_file(self.audio_dir, sample.id, media.AUDIO_EXTENSIONS)
            except DataError:
                if self.vision_dir is None or self.vision_spec.format != "video_rawvideo":
                    raise
        return media.find_media_file(self.vision_dir, sample.id, media.VIDEO_EXTENSIONS)

    def _load_audio(self, sample: Sample, rng: random.Random) -> torch.Tensor:
        try:
            return media.load_audio(self.audio_path(sample), self.audio_spec, self.training, rng)
        except DataError:
            if not self.entry.allow_missing_audio:
                raise
            spec = self.audio_spec  # explicitly allowed by the config: silence stands in for no audio
            return torch.zeros(spec.sample_num, spec.target_length, spec.melbins)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        rng = self._rng(index)
        item = {"sample": sample, "vision": None, "audio": None, "failed": None}
        try:
            if self.needs_vision:
                item["vision"] = media.load_vision(self.vision_path(sample), self.vision_spec, self.training, rng)
            if self.needs_audio:
                item["audio"] = self._load_audio(sample, rng)
        except DataError as error:
            if not self.training:
                raise  # evaluation never drops or replaces an item
            item["failed"] = str(error)
        if self.training:
            item["caption_choice"] = rng.random()
        return item

    def collate(self, items: list[dict]) -> Batch:
        skipped = [item["failed"] for item in items if item["failed"] is not None]
        items = [item for item in items if item["failed"] is None]
        samples: list[Sample] = [item["sample"] for item in items]
        batch = Batch(dataset=self.entry.name, task=self.task, ids=[s.id for s in samples], skipped=skipped)
        if not samples:
            return batch
        if self.needs_vision:
            batch.vision = torch.stack([item["vision"] for item in items])
        if self.needs_audio:
            batch.audio = torch.stack([item["audio"] for item in items])
        if self.needs_subtitle or any(s.subtitle is not None for s in samples):
            batch.subtitles = [s.subtitle or "" for s in samples]
        if TaskType.QA in self.task.types:
            self._collate_qa(batch, samples, items)
        if self.training:
            def pick(texts, item):
                return texts[int(item["caption_choice"] * len(texts))] if texts else ""
            batch.captions = [pick(s.captions, it) for s, it in zip(samples, items)] if any(s.captions for s in samples) else None
            batch.caption_ids = list(batch.ids) if batch.captions is not None else None
            for attr in ("vision_captions", "audio_captions", "omni_captions"):
                if any(getattr(s, attr) for s in samples):
                    setattr(batch, attr, [pick(getattr(s, attr), it) for s, it in zip(samples, items)])
        else:
            for modalities in [self.task.modalities] + [g.modalities for g in self.task.groups()]:
                captions, caption_ids = [], []
                for s in samples:
                    texts = texts_for_group(s, modalities)
                    captions += texts
                    caption_ids += [s.id] * len(texts)
                if not captions:
                    continue
                if modalities == self.task.modalities and batch.captions is None:
                    batch.captions, batch.caption_ids = captions, caption_ids
                name = "t" + "".join(m.value for m in modalities)
                batch.group_captions[name] = (captions, caption_ids)
        return batch

    def _collate_qa(self, batch: Batch, samples: list[Sample], items: list[dict]) -> None:
        if self.training:
            # one question a video per step, chosen with the item's own rng draw
            picks = [int(item["caption_choice"] * len(s.questions)) for s, item in zip(samples, items)]
            batch.questions = [s.questions[k] for s, k in zip(samples, picks)]
            batch.answers = [s.answers[k] for s, k in zip(samples, picks)]
            batch.question_ids = [f"{s.id}#{k}" for s, k in zip(samples, picks)]
            batch.question_video_index = list(range(len(samples)))
        else:
            batch.questions = [q for s in samples for q in s.questions]
            batch.answers = [a for s in samples for a in s.answers]
            batch.question_ids = [f"{s.id}#{k}" for s in samples for k in range(len(s.questions))]
            batch.question_video_index = [i for i, s in enumerate(samples) for _ in s.questions]
