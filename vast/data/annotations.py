"""JSON annotation datasets (every format of DESIGN 2.4): rows -> Samples, media decoded on access.

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

from pathlib import Path

from torch.utils.data import Dataset

from vast.config import DataEntry, read_json, resolve_path
from vast.data import media
from vast.data.batch import Batch, Item, Sample, collate, sample_problem
from vast.data.items import decode_item, item_rng, media_specs
from vast.errors import ConfigError, DataError, MediaError


ID_KEYS = ("video_id", "clip_id", "image_id", "id")
CAPTION_KEYS = ("desc", "caption")


def _as_text_list(value, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise DataError(f"{where}: expected a string or a list of strings, got {value!r:.80}")
    return items


def _captions(value, where: str) -> list[str]:
    """Caption texts; an empty one would train on nothing and score as a blank reference."""
    captions = _as_text_list(value, where)
    for k, caption in enumerate(captions):
        if not caption.strip():
            raise DataError(f"{where}[{k}]: empty caption; give it text or remove it from the list")
    return captions


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
        sample.captions = _captions(row[caption_key], f"{where}.{caption_key}")
        if not sample.captions:
            raise DataError(f"{where}.{caption_key}: empty caption list")
    for key, attr in (("vision_cap", "vision_captions"), ("audio_cap", "audio_captions"), ("vast_cap", "omni_captions")):
        if key in row:
            setattr(sample, attr, _captions(row[key], f"{where}.{key}"))
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


class AnnotationDataset(Dataset):
    """A `type: annoindexed` dataset: annotation rows + media folders, decoded on access."""

    def __init__(self, entry: DataEntry, model_cfg, seed: int = 0):
        self.entry = entry
        self.training = entry.training
        self.task = entry.task
        self.seed = seed
        self.epoch = 0
        self.samples = load_annotations(entry.txt)
        self.specs = media_specs(entry, model_cfg)
        self.vision_dir = resolve_path(entry.vision) if entry.vision else None
        self.audio_dir = resolve_path(entry.audio) if entry.audio else None
        if (self.specs.needs_vision or (self.specs.needs_audio and not self.audio_dir)) and self.vision_dir is None:
            raise ConfigError(f"{entry.where}: task '{entry.task}' needs 'vision' (the media folder)")
        self._check_text_fields()

    def _check_text_fields(self) -> None:
        for i, sample in enumerate(self.samples):
            problem = sample_problem(sample, self.task, self.training)
            if problem:
                raise DataError(f"{self.entry.where}: {self.entry.txt} row {i} ({sample.id}): {problem}")

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def vision_path(self, sample: Sample) -> Path:
        fmt = self.specs.vision.format
        if fmt == "video_frame":
            folder = self.vision_dir / sample.id
            if not folder.is_dir():
                raise MediaError(folder, f"frame folder not found (dataset {self.entry.name})")
            return folder
        extensions = media.IMAGE_EXTENSIONS if fmt == "image_rawimage" else media.VIDEO_EXTENSIONS
        return media.find_media_file(self.vision_dir, sample.id, extensions)

    def audio_path(self, sample: Sample) -> Path:
        """The clip's own audio file if the audio folder has one, else the video's audio track."""
        if self.audio_dir is not None:
            try:
                return media.find_media_file(self.audio_dir, sample.id, media.AUDIO_EXTENSIONS)
            except DataError:
                if self.vision_dir is None or self.specs.vision.format != "video_rawvideo":
                    raise
        return media.find_media_file(self.vision_dir, sample.id, media.VIDEO_EXTENSIONS)

    def __getitem__(self, index: int) -> Item:
        sample = self.samples[index]
        return decode_item(sample, lambda: self.vision_path(sample), lambda: self.audio_path(sample), self.specs,
                           self.training, item_rng(self.seed, self.epoch, index))

    def collate(self, items: list[Item]) -> Batch:
        return collate(items, self.entry.name, self.task, self.training,
                       (self.specs.vision.mean, self.specs.vision.std))
