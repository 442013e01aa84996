"""The labeling pipeline end to end: a folder of videos -> shards, annotations and a report; resumable
after SIGKILL, the same labels from the Ray executor, and bad files reported rather than dropped."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from vast.errors import ConfigError
from vast.labeling.config import load_label_config
from vast.labeling.pipeline import label_corpus, main

from conftest import ROOT
from test_shards import loader_for, shard_entry

GOOD = 5


@pytest.fixture(scope="module")
def videos(demo_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw_videos")
    for i in range(GOOD):
        shutil.copy(demo_corpus / "videos" / f"demo_{i:04d}.mp4", folder / f"clip{i}.mp4")
    return folder


def settings(captioner_run, **extra) -> list[str]:
    values = {"vision_captioner": captioner_run, "audio_captioner": captioner_run, "shard_size": 2,
              "batch_size": 2, "frames": 4, "workers": 1, "llm": "", "progress": False, **extra}
    return [token for key, value in values.items() for token in (f"--{key}", str(value))]


def config(captioner_run, **extra):
    tokens = settings(captioner_run, **extra)
    return load_label_config({tokens[i][2:]: [tokens[i + 1]] for i in range(0, len(tokens), 2)})


def shard_ids(out: Path) -> list[str]:
    ids = []
    for tar in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar) as archive:
            ids += [json.loads(archive.extractfile(m).read())["clip_id"] for m in archive if m.name.endswith(".json")]
    return ids


@pytest.fixture(scope="module")
def uninterrupted(videos, captioner_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("labeled")
    report = label_corpus(videos, out, config(captioner_run))
    return out, report


def test_output_is_shards_annotations_and_a_report(uninterrupted, write_config):
    out, report = uninterrupted
    assert report["labeled"] == GOOD and report["skipped"] == 0 and report["shards"] == 3
    assert set(report["stages"]) == {"decode", "subtitles", "vision_captions", "audio_captions", "omni_captions",
                                     "shard_media", "write"}
    annotations = json.loads((out / "annotations.json").read_text())
    assert [a["clip_id"] for a in annotations] == [f"clip{i}" for i in range(GOOD)] == shard_ids(out)
    first = annotations[0]
    assert len(first["vision_cap"]) == len(first["audio_cap"]) == 3 and first["omni_source"] == "template"
    assert first["subtitle"] and first["subtitle_segments"][0]["end"] > 0 and first["duration"] == 3.0
    assert len(first["vast_cap"]) == 3 and first["subtitle"].rstrip(".") in first["vast_cap"][0]
    with tarfile.open(out / "shard-000000.tar") as archive:
        assert archive.getnames() == ["clip0.json", "clip0.mp4", "clip1.json", "clip1.mp4"]
    # readable at once by a `type: shards` data entry, the omni caption as the text of tvas
    loader = loader_for(write_config, shard_entry(str(out / "shards.json"), "val", task="ret%tvas"))
    batches = list(loader)
    assert sum(len(b.ids) for b in batches) == GOOD
    assert batches[0].texts_for(batches[0].task.groups()[0]).texts[0] == first["vast_cap"][0]


def test_a_rerun_of_a_complete_output_does_nothing(uninterrupted, videos, captioner_run):
    out, _ = uninterrupted
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    report = label_corpus(videos, out, config(captioner_run))
    assert report["clips_this_run"] == 0 and report["labeled"] == GOOD
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == before
    with pytest.raises(ConfigError, match="other settings .*top_k was 10, now 5"):
        label_corpus(videos, out, config(captioner_run, top_k=5))


def test_killed_run_resumes_to_the_same_labels(uninterrupted, videos, captioner_run, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "vast.labeling.pipeline", str(videos), str(out),
               *settings(captioner_run, batch_size=2)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 240
    while not (out / "progress" / "shard-000000.json").exists() and time.time() < deadline:
        assert process.poll() is None, "the labeling run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the run and its decoding workers, mid-way
    process.wait()
    assert not (out / "report.json").exists() and not (out / "progress" / "shard-000002.json").exists()
    assert main([str(videos), str(out), *settings(captioner_run)]) == 0
    assert shard_ids(out) == [f"clip{i}" for i in range(GOOD)]  # every clip exactly once
    assert json.loads((out / "annotations.json").read_text()) == \
        json.loads((uninterrupted[0] / "annotations.json").read_text())


def test_ray_executor_gives_the_same_clips_and_labels(uninterrupted, videos, captioner_run, tmp_path):
    pytest.importorskip("ray")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = label_corpus(videos, tmp_path / "ray", config(captioner_run, engine="ray"))
    finally:
        ray.shutdown()
    assert report["engine"] == "ray" and report["labeled"] == GOOD
    assert json.loads((tmp_path / "ray" / "annotations.json").read_text()) == \
        json.loads((uninterrupted[0] / "annotations.json").read_text())
    assert shard_ids(tmp_path / "ray") == shard_ids(uninterrupted[0])


def test_bad_files_are_reported_with_their_reason(videos, captioner_run, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(videos, folder)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "fake.mp4").write_text("this is not a video\n")
    (folder / "notes.txt").write_text("a file that is not a video\n")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:d=2",
                    "-pix_fmt", "yuv420p", str(folder / "mute.mp4")], check=True)
    assert main([str(folder), str(tmp_path / "out"), *settings(captioner_run)]) == 3  # some were skipped
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = {s["clip_id"]: s["reason"] for s in report["skipped_clips"]}
    assert reasons == {"empty": "empty file", "fake": "undecodable", "notes.txt": "not a video file",
                       "mute": "no audio stream"}
    assert report["labeled"] == GOOD and report["skipped_by_reason"]["no audio stream"] == 1
    printed = capsys.readouterr().out
    assert "skipped 4" in printed and "mute: no audio stream" in printed
    index = json.loads((tmp_path / "out" / "shards.json").read_text())
    assert index["total"] == GOOD and {f["clip_id"] for f in index["failed"]} == set(reasons)


def test_settings_mistakes_are_one_line(videos, captioner_run, tmp_path, capsys):
    assert main([str(videos), str(tmp_path / "o"), "--shard_sise", "3"]) == 2
    assert "unknown labeling setting 'shard_sise' (did you mean 'shard_size'" in capsys.readouterr().err
    assert main([str(videos), str(tmp_path / "o"), "--vision_captioner", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "vision captioner not found" in error and "pretrained_weights" in error
    assert main([str(tmp_path / "missing"), str(tmp_path / "o"), *settings(captioner_run)]) == 2
    assert "video folder not found" in capsys.readouterr().err
