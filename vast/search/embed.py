"""`vast embed`: a folder of clips -> contrastive features per modality group in a search index.

Clips are decoded as retrieval evaluation decodes test clips (the middle frame of each segment, the
middle fbank slice; `InferenceMixin.load_clips`), in DataLoader worker processes, a batch at a time.
A rerun embeds only files that are new or whose size or modification time changed. A clip that
cannot be decoded is reported and left out of the index, never replaced; a clip without a sound
track is indexed for the groups without audio only, and the report says so.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vast.data import media
from vast.data.sources import VIDEO_EXTENSIONS, open_container
from vast.errors import DataError, MediaError
from vast.search.index import ClipRecord, SearchIndex
from vast.tasks import Modality, ModalityGroup

logger = logging.getLogger(__name__)

THUMBNAIL_WIDTH = 320


@dataclass
class EmbedSettings:
    frames: int = 8
    audio_clips: int = 1
    subtitles: str = "none"  # none | whisper | an annotation file with each id's subtitle
    groups: tuple[str, ...] = ()  # () = every group the clips and subtitles allow
    batch_size: int = 8
    workers: int = 2
    precision: str = "run"  # run: the autocast of the run's evaluation (vast.api.load_model); fp32


@dataclass
class EmbedReport:
    embedded: list[str] = field(default_factory=list)
    unchanged: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason
    no_audio: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # clips whose file is gone: no longer searchable

    def summary(self) -> str:
        return (f"{len(self.embedded)} embedded, {self.unchanged} unchanged, {len(self.removed)} removed (file gone), "
                f"{len(self.no_audio)} without audio (vision groups only), {len(self.failed)} failed")


def list_clips(folder: Path) -> dict[str, Path]:
    """Clip id (the file name without its extension) -> video file, for every video in `folder`."""
    if not folder.is_dir():
        raise DataError(f"video folder not found: {folder}")
    clips: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in VIDEO_EXTENSIONS or not path.is_file():
            continue
        if path.stem in clips:
            raise DataError(f"{folder}: {clips[path.stem].name} and {path.name} would share the id '{path.stem}'; "
                            "rename one")
        clips[path.stem] = path.resolve()
    if not clips:
        raise DataError(f"{folder}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return clips


def read_subtitle_file(path: Path) -> dict[str, str]:
    """An annotation list (`[{"video_id" | "clip_id" | "id", "subtitle"}]`) or a `{id: subtitle}` map."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"--subtitles: file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"--subtitles: {path} is not valid JSON ({error})") from None
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, list):
        table = {}
        for row in raw:
            key = next((row[k] for k in ("video_id", "clip_id", "id") if isinstance(row, dict) and k in row), None)
            if key is not None and isinstance(row.get("subtitle"), str):
                table[str(key)] = row["subtitle"]
        return table
    raise DataError(f"--subtitles: {path} must map ids to subtitles (an object, or a list of annotation rows)")


def default_groups(model, with_subtitles: bool) -> list[str]:
    """The groups the model has a contrastive head for, without `s` unless subtitles are given."""
    names = ["tv", "ta"] + ["t" + letters for letters in model.model_cfg["omni_contra_groups"]]
    return [n for n in dict.fromkeys(names) if with_subtitles or "s" not in n]


class _ClipDecoder(Dataset):
    """Decodes one clip per item in a worker, and writes its thumbnail into `thumbs` (when given):
    (id, frames or None, fbank or None, error, thumbnail written)."""

    def __init__(self, items: list[tuple[str, Path]], vision: media.VisionSpec | None, audio: media.AudioSpec | None,
                 thumbs: Path | None = None):
        self.items, self.vision, self.audio, self.thumbs = items, vision, audio, thumbs

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        clip_id, path = self.items[index]
        rng = random.Random(0)  # evaluation sampling is deterministic; the generator is not used
        try:
            frames = media.load_vision(path, self.vision, False, rng) if self.vision else None
        except (MediaError, DataError) as error:
            return clip_id, None, None, str(error), False
        thumbnail = self.thumbs is not None and make_thumbnail(path, self.thumbs / f"{clip_id}.jpg")
        sound = None
        if self.audio:
            try:
                sound = media.load_audio(path, self.audio, False, rng)
            except (MediaError, DataError) as error:
                return clip_id, frames, None, f"no audio: {error}", thumbnail
        return clip_id, frames, sound, "", thumbnail


def _collate(items):
    return items


def make_thumbnail(path: Path, target: Path) -> bool:
    """Writes the first frame at or after the middle of the clip as a JPEG THUMBNAIL_WIDTH wide, with
    PyAV in this process (a seek and a frame or two: several times cheaper than an ffmpeg process, see
    bench/search.py). False when the file gives no frame."""
    try:
        with open_container(path) as container:
            stream = container.streams.video[0]
            middle = (container.duration or 0) / av.time_base / 2
            if middle > 0 and stream.time_base:
                container.seek(int(middle / stream.time_base), stream=stream)  # the keyframe before
            frame = None
            for frame in container.decode(stream):
                if frame.time is None or frame.time >= middle:
                    break
            if frame is None:
                return False
            image = frame.to_image()
    except (av.FFmpegError, MediaError, IndexError):
        return False
    height = max(2, round(image.height * THUMBNAIL_WIDTH / image.width / 2) * 2)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.resize((THUMBNAIL_WIDTH, height)).save(target, format="JPEG", quality=85)
    return True


def _subtitles_for(ids_paths: list[tuple[str, Path]], source: str) -> dict[str, str]:
    if source == "none":
        return {}
    if source == "whisper":
        from vast.labeling.asr import AsrConfig, WhisperSubtitles

        stage = WhisperSubtitles(AsrConfig())
        stage.setup()
        table = {}
        for clip_id, path in ids_paths:
            try:
                table[clip_id] = stage.transcribe(media.load_waveform(path).numpy()).text
            except MediaError:
                table[clip_id] = ""  # no sound track: nothing is said
        return table
    return read_subtitle_file(Path(source))


def embed_folder(video_dir, model_path, out_dir, settings: EmbedSettings | None = None,
                 progress: bool | None = None) -> EmbedReport:
    """Embed the new and changed clips of `video_dir` into the index at `out_dir` (made if absent)."""
    from vast.api import load_model

    settings = settings or EmbedSettings()
    out_dir = Path(out_dir)
    clips = list_clips(Path(video_dir))
    model = load_model(model_path, precision=settings.precision)
    if torch.cuda.is_available():
        model = model.cuda()
    groups = list(settings.groups) or default_groups(model, settings.subtitles != "none")
    for name in groups:
        ModalityGroup.parse(name)
    index_settings = {"frames": settings.frames, "audio_clips": settings.audio_clips, "subtitles": settings.subtitles,
                      "precision": settings.precision}
    if (out_dir / "index.json").is_file():
        index = SearchIndex.open(out_dir)
        if index.settings != index_settings or index.groups != groups or index.model != str(model_path):
            raise DataError(f"{out_dir}: made with other settings ({index.model}, {index.groups}, {index.settings}); "
                            "embed into a new folder, or give the same --model, --groups, --frames, --audio_clips, "
                            "--subtitles and --precision")
    else:
        index = SearchIndex.create(out_dir, str(model_path), groups, index_settings)

    report = EmbedReport()
    for clip_id, known in list(index.clips.items()):  # a clip whose file is gone cannot be shown or reranked
        if not Path(known.path).is_file():
            index.clips.pop(clip_id)
            if known.thumbnail:
                (index.folder / known.thumbnail).unlink(missing_ok=True)
            report.removed.append(clip_id)
    todo = []
    for clip_id, path in clips.items():
        known = index.clips.get(clip_id)
        if known is not None and known.path == str(path) and known.unchanged(path.stat()):
            report.unchanged += 1
        else:
            todo.append((clip_id, path))
    if todo:
        _embed(model, todo, groups, settings, index, report, progress)
    index.save()
    return report


def _embed(model, todo, groups, settings: EmbedSettings, index: SearchIndex, report: EmbedReport, progress) -> None:
    parsed = [ModalityGroup.parse(g) for g in groups]
    needs = {m for g in parsed for m in g.modalities}
    cfg = model.model_cfg
    mean, std = media.vision_normalisation(cfg["vision_encoder_type"])
    vision = media.VisionSpec(format="video_rawvideo", sample_num=settings.frames,
                              resolution=int(cfg["vision_resolution"]), mean=mean, std=std) \
        if Modality.VISION in needs else None
    audio = media.AudioSpec(sample_num=settings.audio_clips, melbins=int(cfg["audio_melbins"]),
                            target_length=int(cfg["audio_target_length"])) if Modality.AUDIO in needs else None
    subtitles = _subtitles_for(todo, settings.subtitles)
    loader = DataLoader(_ClipDecoder(todo, vision, audio, index.folder / "thumbs"), batch_size=settings.batch_size,
                        num_workers=settings.workers, collate_fn=_collate)
    rows: dict[str, tuple[list[str], list[np.ndarray]]] = {g: ([], []) for g in groups}
    records = []
    show = sys.stderr.isatty() if progress is None else progress
    paths = dict(todo)
    with tqdm(total=len(todo), unit="clip", disable=not show, desc="embed") as bar:
        for batch in loader:
            good = [item for item in batch if not item[3] or item[3].startswith("no audio")]
            for clip_id, _, _, error, _ in batch:
                if error and not error.startswith("no audio"):
                    report.failed[clip_id] = error
                elif error:
                    report.no_audio.append(clip_id)
            for group in parsed:
                usable = [item for item in good if Modality.AUDIO not in group.modalities or item[2] is not None]
                if not usable:
                    continue
                texts = [subtitles.get(item[0], "") for item in usable] if Modality.SUBTITLE in group.modalities else None
                features = model.embed(group, vision=_stack(usable, 1) if Modality.VISION in group.modalities else None,
                                       audio=_stack(usable, 2) if Modality.AUDIO in group.modalities else None,
                                       subtitles=texts)
                ids, arrays = rows[group.name]
                ids += [item[0] for item in usable]
                arrays.append(features.float().cpu().numpy())
            for clip_id, _, _, _, thumbnail in good:
                path = paths[clip_id]
                stat = path.stat()
                records.append(ClipRecord(clip_id, str(path), stat.st_size, stat.st_mtime, subtitles.get(clip_id, ""),
                                          f"thumbs/{clip_id}.jpg" if thumbnail else ""))
                report.embedded.append(clip_id)
            bar.update(len(batch))
    features = {g: (ids, np.concatenate(arrays)) for g, (ids, arrays) in rows.items() if ids}
    if records:
        index.add_shard(features, records)
    for clip_id in report.failed:  # a file that no longer decodes is not searchable under its old rows
        index.clips.pop(clip_id, None)


def _stack(items, k: int) -> torch.Tensor:
    """Field k (1 frames, 2 fbank) of the decoded items as one batch."""
    return torch.stack([item[k] for item in items])
