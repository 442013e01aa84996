"""Sample -> typed batch, for every dataset kind: the caption each group uses, subtitles, the QA layout.

A dataset (annotation files, shards) turns one clip into an `Item`: its normalised `Sample` and its
decoded media. `collate` turns a list of items into a `Batch`. The rules that decide what a group
reads live here and nowhere else:
- the caption for a group (`caption_source`): vision captions for `tv`, audio captions for `ta`, the
  omni caption for groups of two or more condition modalities, when the clip has them; else `desc`;
- a training batch holds one caption per clip and group, drawn with the item's own random number
  (the same draw picks the QA pair); an evaluation batch holds every reference with its clip id;
- `GroupTexts.omni` says whether a group's texts are omni captions (they get `max_omni_caption_len`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vast.data.media import normalize_frames
from vast.tasks import Modality, TaskSpec, TaskType


@dataclass
class Sample:
    """One clip's text, normalised: every caption kind as a list, QA as parallel lists."""

    id: str
    captions: list[str] = field(default_factory=list)
    vision_captions: list[str] = field(default_factory=list)
    audio_captions: list[str] = field(default_factory=list)
    omni_captions: list[str] = field(default_factory=list)
    subtitle: str | None = None
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # the answer trained on, one per question
    answer_refs: list[list[str]] = field(default_factory=list)  # every reference answer (VQAv2: 10 people's)
    question_ids: list[str] = field(default_factory=list)  # the release's ids, when the rows give them

    def question_id(self, k: int) -> str:
        return self.question_ids[k] if self.question_ids else f"{self.id}#{k}"

    def references(self, k: int) -> list[str]:
        return self.answer_refs[k] if self.answer_refs else [self.answers[k]]


def caption_source(sample: Sample, modalities: tuple[Modality, ...]) -> str:
    """Which caption field of `sample` describes a group of `modalities` (see the module docstring)."""
    if len(modalities) > 1 and sample.omni_captions:
        return "omni_captions"
    if modalities == (Modality.VISION,) and sample.vision_captions:
        return "vision_captions"
    if modalities == (Modality.AUDIO,) and sample.audio_captions:
        return "audio_captions"
    for name in ("captions", "omni_captions", "vision_captions", "audio_captions"):
        if getattr(sample, name):
            return name
    return "captions"


def texts_for_group(sample: Sample, modalities: tuple[Modality, ...]) -> list[str]:
    """The captions that describe a group of `modalities` for this clip (may be empty)."""
    return getattr(sample, caption_source(sample, modalities))


def sample_problem(sample: Sample, task: TaskSpec, training: bool) -> str | None:
    """Why `sample` cannot be used for `task`, or None: the text checks every dataset kind applies."""
    if Modality.SUBTITLE in task.modalities and sample.subtitle is None:
        return (f"no 'subtitle' but task '{task}' uses subtitles (s); add subtitles "
                "(e.g. with the ASR labeling step) or drop 's' from the task")
    if TaskType.QA in task.types and not sample.questions:
        return f"task '{task}' is QA but the clip has no 'question'/'answer'"
    if training and TaskType.QA not in task.types and not texts_for_group(sample, task.modalities):
        return "no caption ('desc', 'caption' or VAST-27M captions) to train on"
    return None


def group_names(task: TaskSpec) -> list[tuple[str, tuple[Modality, ...]]]:
    """(name, modalities) of every group a batch carries texts for: the task's own union, then each group."""
    named = {}
    for modalities in [task.modalities] + [g.modalities for g in task.groups()]:
        named.setdefault("t" + "".join(m.value for m in modalities), modalities)
    return list(named.items())


@dataclass(frozen=True)
class Failure:
    """Why a clip (or a whole shard) could not be used: the file and what is wrong with it."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason


@dataclass
class Item:
    """One clip as a dataset hands it over: text, decoded media, or why it failed (then no sample
    may be known, e.g. for an unreadable shard)."""

    sample: Sample | None
    vision: torch.Tensor | None = None  # [F, 3, H, W]
    audio: torch.Tensor | None = None  # [C, T, M]
    failed: Failure | None = None  # collate leaves the item out; the loader decides what that means
    choice: float = 0.0  # training: the item's draw, picks its caption and QA pair
    stream: dict | None = None  # shard streams: the reader's position after this item


@dataclass
class GroupTexts:
    """A group's captions in a batch and the clip id of each (training: one per clip)."""

    texts: list[str]
    owners: list[str]
    omni: bool  # any of them is an omni caption

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Batch:
    """A collated batch. `texts` maps a group name to its captions (see `GroupTexts`)."""

    dataset: str
    task: TaskSpec
    ids: list[str]
    texts: dict[str, GroupTexts] = field(default_factory=dict)
    subtitles: list[str] | None = None
    questions: list[str] | None = None
    answers: list[str] | None = None
    answer_refs: list[list[str]] | None = None
    question_ids: list[str] | None = None
    question_video_index: list[int] | None = None  # which clip of the batch each question is about
    vision: torch.Tensor | None = None  # [B, F, 3, H, W]: uint8 from a loader, float32 after `to`
    vision_norm: tuple | None = None  # (mean, std) that `to` normalises uint8 frames with
    audio: torch.Tensor | None = None  # [B, C, T, M]
    skipped: list[Failure] = field(default_factory=list)  # items left out: what failed and why
    stream: dict | None = None  # shard streams: the reader's position after this batch

    def __len__(self) -> int:
        return len(self.ids)

    def texts_for(self, group) -> GroupTexts | None:
        return self.texts.get(group.name)

    def to(self, device) -> "Batch":
        """Move the media to `device`; uint8 frames become normalised float32 there."""
        if self.audio is not None:
            self.audio = self.audio.to(device, non_blocking=True)
        if self.vision is not None:
            self.vision = self.vision.to(device, non_blocking=True)
            if self.vision.dtype == torch.uint8:
                self.vision = normalize_frames(self.vision, *self.vision_norm)
        return self


def _pick(texts: list, choice: float):
    return texts[int(choice * len(texts))]


def collate(items: list[Item], dataset: str, task: TaskSpec, training: bool, vision_norm=None) -> Batch:
    """Stack the media of the items that decoded and lay out their texts for `task`; `vision_norm`
    is the (mean, std) the frames are normalised with when the batch moves to its device."""
    skipped = [item.failed for item in items if item.failed is not None]
    items = [item for item in items if item.failed is None]
    samples = [item.sample for item in items]
    streams = [item.stream for item in items if item.stream is not None]
    batch = Batch(dataset=dataset, task=task, ids=[s.id for s in samples], skipped=skipped,
                  stream=streams[-1] if streams else None, vision_norm=vision_norm)
    if not samples:
        return batch
    modalities = task.modalities
    if Modality.VISION in modalities:
        batch.vision = torch.stack([item.vision for item in items])
    if Modality.AUDIO in modalities:
        batch.audio = torch.stack([item.audio for item in items])
    if Modality.SUBTITLE in modalities or any(s.subtitle is not None for s in samples):
        batch.subtitles = [s.subtitle or "" for s in samples]
    if TaskType.QA in task.types:
        _layout_qa(batch, items, training)
    for name, group_modalities in group_names(task):
        texts, owners, omni = [], [], False
        for item in items:
            source = caption_source(item.sample, group_modalities)
            candidates = getattr(item.sample, source)
            if not candidates:
                continue
            chosen = [_pick(candidates, item.choice)] if training else candidates
            texts += chosen
            owners += [item.sample.id] * len(chosen)
            omni |= source == "omni_captions"
        if texts:
            batch.texts[name] = GroupTexts(texts, owners, omni)
    return batch


def _layout_qa(batch: Batch, items: list[Item], training: bool) -> None:
    samples = [item.sample for item in items]
    if training:
        # one question a clip per step, chosen with the item's own draw
        picks = [int(item.choice * len(s.questions)) for s, item in zip(samples, items)]
        batch.questions = [s.questions[k] for s, k in zip(samples, picks)]
        batch.answers = [s.answers[k] for s, k in zip(samples, picks)]
        batch.question_ids = [s.question_id(k) for s, k in zip(samples, picks)]
        batch.question_video_index = list(range(len(samples)))
    else:
        batch.questions = [q for s in samples for q in s.questions]
        batch.answers = [a for s in samples for a in s.answers]
        batch.answer_refs = [s.references(k) for s in samples for k in range(len(s.questions))]
        batch.question_ids = [s.question_id(k) for s in samples for k in range(len(s.questions))]
        batch.question_video_index = [i for i, s in enumerate(samples) for _ in s.questions]
