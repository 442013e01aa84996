"""Annotation datasets: every format of DESIGN 2.4 loads, collates into typed batches, fails clearly."""

import json
from pathlib import Path

import pytest
import torch

from vast.config import load_config
from vast.data.annotations import AnnotationDataset, load_annotations, normalise_row
from vast.data.batch import texts_for_group
from vast.data.loader import ShardedSampler, build_loader
from vast.distributed import DistInfo
from vast.errors import DataError
from vast.tasks import Modality

from conftest import demo_entry

CPU = DistInfo(0, 1, 0, torch.device("cpu"), None)


def dataset_for(write_config, corpus, txt, task, split="val", **extra):
    entry = demo_entry(corpus, split, txt, task, **extra)
    config = load_config(write_config([entry] if split == "train" else [], [entry] if split == "val" else []))
    data = (config.train + config.val)[0]
    return AnnotationDataset(data, config.model_cfg), config


def first_batch(dataset, config):
    return next(iter(build_loader(dataset.entry, config, CPU, dataset))).to("cpu")


def test_retrieval_test_batch_flattens_reference_captions(demo_corpus, write_config):
    dataset, config = dataset_for(write_config, demo_corpus, "cap_test.json", "ret%tvas")
    batch = first_batch(dataset, config)
    rows = json.loads((demo_corpus / "annotations" / "cap_test.json").read_text())[:4]
    assert batch.ids == [r["video_id"] for r in rows]
    assert batch.texts["tvas"].texts == [c for r in rows for c in r["desc"]]
    assert batch.texts["tvas"].owners == [r["video_id"] for r in rows for _ in r["desc"]]
    assert batch.subtitles == [r["subtitle"] for r in rows]
    assert batch.vision.shape == (4, 2, 3, 64, 64) and batch.vision.dtype == torch.float32
    assert batch.audio.shape == (4, 1, 256, 64)


def test_training_batch_picks_one_caption_per_video(demo_corpus, write_config):
    dataset, config = dataset_for(write_config, demo_corpus, "ret_train.json", "ret%tv", split="train")
    batch = first_batch(dataset, config)
    assert len(batch.texts["tv"]) == len(batch.ids) == 4
    assert batch.audio is None  # tv needs no audio: none is decoded
    assert batch.vision.shape[:2] == (4, 2)


def test_vast27m_rows_give_captions_per_group(demo_corpus, write_config):
    dataset, config = dataset_for(write_config, demo_corpus, "vast27m_train.json", "ret%tvas%tv%ta", split="train")
    batch = first_batch(dataset, config)
    sample = dataset.samples[0]
    assert batch.texts["tv"].texts[0] in sample.vision_captions and not batch.texts["tv"].omni
    assert batch.texts["ta"].texts[0] in sample.audio_captions
    assert batch.texts["tvas"].texts[0] in sample.omni_captions and batch.texts["tvas"].omni
    assert texts_for_group(sample, (Modality.VISION,)) == sample.vision_captions
    assert texts_for_group(sample, (Modality.AUDIO,)) == sample.audio_captions
    assert texts_for_group(sample, (Modality.VISION, Modality.AUDIO)) == sample.omni_captions


def test_qa_train_without_desc_and_qa_test_lists(demo_corpus, write_config):
    dataset, config = dataset_for(write_config, demo_corpus, "qa_train.json", "qa%tvas", split="train")
    batch = first_batch(dataset, config)
    assert len(batch.questions) == len(batch.answers) == len(batch.ids) and not batch.texts
    dataset, config = dataset_for(write_config, demo_corpus, "qa_test.json", "qa%tvas")
    batch = first_batch(dataset, config)
    rows = json.loads((demo_corpus / "annotations" / "qa_test.json").read_text())[:4]
    assert batch.questions == [q for r in rows for q in r["question"]]
    assert batch.answers == [a for r in rows for a in r["answer"]]
    assert batch.question_video_index == [i for i, r in enumerate(rows) for _ in r["question"]]


def test_captioner_meta_has_only_ids(demo_corpus, write_config):
    dataset, config = dataset_for(write_config, demo_corpus, "captioner_meta.json", "cap%tv")
    batch = first_batch(dataset, config)
    assert not batch.texts and batch.subtitles is None and batch.vision.shape[0] == 4


def test_audio_from_the_video_track_when_no_audio_folder(demo_corpus, write_config):
    dataset, config = dataset_for(write_config, demo_corpus, "ret_test.json", "ret%ta", audio="")
    from_video = first_batch(dataset, config).audio
    dataset, config = dataset_for(write_config, demo_corpus, "ret_test.json", "ret%ta")
    from_wav = first_batch(dataset, config).audio
    assert from_video.shape == from_wav.shape
    # the same sound, once through AAC: the fbank stays close
    assert (from_video - from_wav).abs().mean() < 0.2


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"desc": "a cat"}, "no id key"),
        ({"video_id": "v1", "desc": 3}, "expected a string or a list"),
        ({"video_id": "v1", "desc": []}, "empty caption list"),
        ({"video_id": "v1", "desc": ["a dog", "  "]}, "desc[1]: empty caption"),
        ({"clip_id": "v1", "vast_cap": [""], "vision_cap": ["x"]}, "vast_cap[0]: empty caption"),
        ({"video_id": "v1", "question": ["a", "b"], "answer": ["x"]}, "2 questions but 1 answers"),
        ({"video_id": "v1", "desc": "x", "subtitle": None}, "subtitle: expected a string"),
        ("v1", "expected an object"),
    ],
)
def test_malformed_rows(row, fragment):
    with pytest.raises(DataError) as info:
        normalise_row(row, "anno.json row 7")
    assert fragment in str(info.value) and "anno.json row 7" in str(info.value)


def test_every_id_and_caption_key_and_non_ascii():
    for key in ("video_id", "image_id", "id", "clip_id"):
        assert normalise_row({key: 5, "caption": "x"}, "w").id == "5"
    sample = normalise_row({"video_id": "v", "caption": ["Ein Hund läuft", "狗在跑"]}, "w")
    assert sample.captions == ["Ein Hund läuft", "狗在跑"]


def test_file_level_errors(tmp_path):
    coco = tmp_path / "refs.json"
    coco.write_text(json.dumps({"annotations": [{"video_id": "v", "caption": "x"}]}))
    with pytest.raises(DataError, match="annfile"):
        load_annotations(coco)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(DataError, match="empty"):
        load_annotations(empty)


def test_missing_subtitle_is_reported_when_the_task_uses_it(demo_corpus, write_config, tmp_path):
    rows = [{"video_id": "demo_0000", "desc": "a clip"}]
    anno = tmp_path / "nosub.json"
    anno.write_text(json.dumps(rows))
    entry = demo_entry(demo_corpus, "val", str(anno), "ret%tvs")
    config = load_config(write_config([], [entry]))
    with pytest.raises(DataError, match="no 'subtitle'.*tvs"):
        AnnotationDataset(config.val[0], config.model_cfg)


def test_bad_media_stops_evaluation_but_is_skipped_in_training(demo_corpus, write_config, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    good = demo_corpus / "videos" / "demo_0000.mp4"
    (videos / "good.mp4").write_bytes(good.read_bytes())
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps([{"video_id": "good", "desc": "a"}, {"video_id": "broken", "desc": "b"}]))
    common = dict(vision=str(videos), audio="", batch_size=2)
    val = demo_entry(demo_corpus, "val", str(anno), "ret%tv", **common)
    config = load_config(write_config([], [val]))
    dataset = AnnotationDataset(config.val[0], config.model_cfg)
    with pytest.raises(DataError, match="broken.mp4"):
        first_batch(dataset, config)
    train = demo_entry(demo_corpus, "train", str(anno), "ret%tv", **common)
    config = load_config(write_config([train], []))
    dataset = AnnotationDataset(config.train[0], config.model_cfg)
    batch = first_batch(dataset, config)
    assert batch.ids == ["good"] and len(batch.skipped) == 1 and "broken.mp4" in str(batch.skipped[0])


def test_missing_audio_is_an_error_unless_allowed(demo_corpus, write_config, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    import subprocess
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=5",
                    "-t", "1", "-pix_fmt", "yuv420p", str(videos / "silent.mp4")], check=True)
    anno = tmp_path / "anno.json"
    anno.write_text(json.dumps([{"video_id": "silent", "desc": "a"}]))
    val = demo_entry(demo_corpus, "val", str(anno), "ret%tva", vision=str(videos), audio="", batch_size=1)
    config = load_config(write_config([], [val]))
    with pytest.raises(DataError, match="silent.mp4"):
        first_batch(AnnotationDataset(config.val[0], config.model_cfg), config)
    config = load_config(write_config([], [dict(val, allow_missing_audio=True)]))
    batch = first_batch(AnnotationDataset(config.val[0], config.model_cfg), config)
    assert batch.audio.abs().sum() == 0


def test_sharded_sampler_covers_every_item_once_in_evaluation():
    shards = [list(ShardedSampler(10, rank, 3, shuffle=False)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10))
    train = [list(ShardedSampler(10, rank, 3, shuffle=True, seed=1)) for rank in range(3)]
    assert len({len(s) for s in train}) == 1 and set(i for s in train for i in s) == set(range(10))


def test_loaders_hand_over_uint8_frames_normalised_identically_by_to(demo_corpus, write_config):
    """Workers send uint8 frames; Batch.to gives exactly what normalising each clip on its own gives."""
    from vast.data import media
    from vast.data.items import item_rng

    dataset, config = dataset_for(write_config, demo_corpus, "ret_train.json", "ret%tv", split="train")
    batch = next(iter(build_loader(dataset.entry, config, CPU, dataset)))
    assert batch.vision.dtype == torch.uint8
    order = list(build_loader(dataset.entry, config, CPU, dataset).dataloader.sampler)[:4]
    expected = torch.stack([media.load_vision(dataset.vision_path(dataset.samples[i]), dataset.specs.vision, True,
                                              item_rng(dataset.seed, 0, i)) for i in order])
    assert torch.equal(batch.to("cpu").vision, expected)
