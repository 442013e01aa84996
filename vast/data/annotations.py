"""JSON annotation datasets (every format of DESIGN 2.4): rows -> Samples, media decoded on access.

Formats accepted, one JSON list per file:
- retrieval / caption: `{"video_id"|"image_id"|"id"|"clip_id", "desc"|"caption": str | [str], "subtitle"?}`
- QA: `{"video_id", "question", "answer", "question_id"?, "subtitle"?}`, question/answer either strings
  (one question a row) or equal-length lists (several questions for one video, as in the released test
  files). An answer may itself be a list: every person's answer (VQAv2's ten), scored with the VQA
  soft accuracy and trained on the most frequent one.
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
        _read_qa(sample, row, where)
    return sample


def _most_frequent(answers: list[str]) -> str:
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return max(counts, key=counts.get)  # ties: the first given, as dicts keep order


def _read_qa(sample: Sample, row: dict, where: str) -> None:
    one_question = isinstance(row.get("question"), str)
    questions = _as_text_list(row.get("question"), f"{where}.question")
    answers = [row.get("answer")] if one_question else row.get("answer")
    if not isinstance(answers, list):
        raise DataError(f"{where}.answer: expected a list of answers for the list of questions, got {answers!r:.80}")
    if len(questions) != len(answers):
        raise DataError(f"{where}: {len(questions)} questions but {len(answers)} answers")
    references = [_as_text_list(a, f"{where}.answer") for a in answers]
    if any(not refs for refs in references):
        raise DataError(f"{where}.answer: an empty answer list; give at least one answer")
    sample.questions = questions
    sample.answers = [_most_frequent(refs) for refs in references]
    if any(len(refs) > 1 for refs in references):
        sample.answer_refs = references
    if "question_id" in row:
        ids = [row["question_id"]] if one_question else row["question_id"]
        if not isinstance(ids, list) or len(ids) != len(questions):
            raise DataError(f"{where}.question_id: expected one id per question, got {row['question_id']!r:.80}")
        sample.question_ids = [str(i) for i in ids]


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
            if self.entry.make_submission and sample.questions and not sample.question_ids:
                raise DataError(f"{self.entry.where}: {self.entry.txt} row {i} ({sample.id}): make_submission "
                                "needs each row's 'question_id' (the ids the submission is scored by)")
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
