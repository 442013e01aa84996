"""Bad inputs end to end through run.py: evaluation stops with one line naming the file, training skips,
counts and logs per dataset, check_data names every problem; the same from annotation files and shards."""

import json
import subprocess

import pytest

from conftest import demo_entry
from test_cli import assert_one_line_error, run

BAD = {  # clip id -> what the file is, and the words its problem is reported with
    "zero_bytes": "empty (0 bytes)",
    "not_a_video": "cannot be opened",
    "truncated": "cannot be opened",
    "silent": "no audio stream",
    "not_there": "no media file",
}


@pytest.fixture(scope="module")
def bad_corpus(demo_corpus, tmp_path_factory):
    """Four good clips of the demo corpus and one clip for each kind of bad file (made by ffmpeg)."""
    root = tmp_path_factory.mktemp("bad_corpus")
    videos = root / "videos"
    videos.mkdir()
    rows = json.loads((demo_corpus / "annotations" / "ret_test.json").read_text())[:4]
    for row in rows:
        (videos / f"{row['video_id']}.mp4").write_bytes((demo_corpus / "videos" / f"{row['video_id']}.mp4").read_bytes())
    (videos / "zero_bytes.mp4").write_bytes(b"")
    (videos / "not_a_video.mp4").write_text("this is a text file, not a video\n")
    whole = (demo_corpus / "videos" / f"{rows[0]['video_id']}.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # the moov atom is at the end: gone
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10", "-t", "2",
                    "-pix_fmt", "yuv420p", str(videos / "silent.mp4")], check=True)
    bad_rows = [{"video_id": clip, "desc": f"a clip named {clip}", "subtitle": "word"} for clip in BAD]
    (root / "anno.json").write_text(json.dumps(rows + bad_rows))
    return root


def entry(corpus, bad_corpus, split, **extra):
    return demo_entry(corpus, split, str(bad_corpus / "anno.json"), "ret%tva", vision=str(bad_corpus / "videos"),
                      audio="", batch_size=3, **extra)


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_stops_with_one_line_naming_the_file(demo_corpus, bad_corpus, write_config, tmp_path, workers):
    path = write_config([], [entry(demo_corpus, bad_corpus, "val", n_workers=workers)], run={"mode": "testing"})
    result = run(["--config", str(path), "--output_dir", str(tmp_path / "o")])
    assert_one_line_error(result, "data_cfg.val[0]")
    line = next(line for line in result.stderr.splitlines() if line.startswith("error"))
    assert any(f"{clip}." in line and words in line for clip, words in BAD.items()), line


def test_training_skips_counts_and_logs_per_dataset(demo_corpus, bad_corpus, write_config, tmp_path):
    train = entry(demo_corpus, bad_corpus, "train", steps=3)
    train.pop("epoch")
    path = write_config([train], [], run={"log_steps": 1})
    out = tmp_path / "o"
    result = run(["--config", str(path), "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "log" / "log.txt").read_text()
    assert "skipped a clip that cannot be used" in log
    summary = next(line for line in log.splitlines() if "clip(s) skipped because they could not be used" in line)
    assert train["name"] in summary


def test_check_data_names_every_bad_file(demo_corpus, bad_corpus, write_config, tmp_path):
    path = write_config([entry(demo_corpus, bad_corpus, "train")], [entry(demo_corpus, bad_corpus, "val")],
                        run={"mode": "check_data"})
    out = tmp_path / "o"
    result = run(["--config", str(path), "--output_dir", str(out)])
    assert_one_line_error(result, "check_data: 10 problem(s) in 2 dataset(s)", "check_data.json")
    report = json.loads((out / "log" / "check_data.json").read_text())
    assert not report["ok"] and [d["items_read"] for d in report["datasets"]] == [9, 9]
    for split in ("train", "val"):
        problems = [p for p in report["problems"] if p["split"] == split]
        for clip, words in BAD.items():
            assert any(f"{clip}." in p["file"] and words in p["problem"] for p in problems), (clip, problems)
    log = (out / "log" / "log.txt").read_text()
    assert all(f"{clip}." in log for clip in BAD)  # the table


def test_check_data_passes_on_good_data_and_shards(demo_corpus, write_config, tmp_path):
    shards = tmp_path / "shards"
    from vast.data.shards import main as write_shards

    assert write_shards(["write", "--txt", str(demo_corpus / "annotations" / "ret_test.json"), "--vision",
                         str(demo_corpus / "videos"), "--out", str(shards), "--shard_size", "5"]) == 0
    shard_entry = {"type": "shards", "name": "demo_shards", "shards": str(shards / "shards.json"),
                   "task": "ret%tvas", "batch_size": 4, "vision_sample_num": 2, "epoch": 1}
    path = write_config([shard_entry], [demo_entry(demo_corpus, "val", "ret_test.json", "ret%tvas")],
                        run={"mode": "check_data"})
    out = tmp_path / "o"
    result = run(["--config", str(path), "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "log" / "check_data.json").read_text())
    assert report["ok"] and [d["items_read"] for d in report["datasets"]] == [16, 16]


def test_shards_from_bad_media_record_the_failures(demo_corpus, bad_corpus, write_config, tmp_path):
    import torch

    from vast.config import load_config
    from vast.data.loader import build_loader
    from vast.data.shards import main as write_shards
    from vast.distributed import DistInfo
    from vast.errors import DataError

    code = write_shards(["write", "--txt", str(bad_corpus / "anno.json"), "--vision", str(bad_corpus / "videos"),
                         "--out", str(tmp_path / "s"), "--media", "presampled", "--frames", "2"])
    index = json.loads((tmp_path / "s" / "shards.json").read_text())
    assert code == 1 and index["total"] == 5  # 4 good clips + the silent one (its audio is recorded missing)
    assert {f["clip_id"] for f in index["failed"]} == {"zero_bytes", "not_a_video", "truncated", "not_there"}
    # the silent clip's missing audio is reported at read time, or silence when the entry asks for it
    entry = {"type": "shards", "name": "bad_shards", "shards": str(tmp_path / "s" / "shards.json"),
             "task": "ret%tva", "batch_size": 5, "vision_sample_num": 2}
    cpu = DistInfo(0, 1, 0, torch.device("cpu"), None)
    config = load_config(write_config([], [entry], name="a.json"))
    with pytest.raises(DataError, match="silent.*no audio stream"):
        list(build_loader(config.val[0], config, cpu))
    config = load_config(write_config([], [dict(entry, audio_missing="zeros")], name="b.json"))
    batch = next(iter(build_loader(config.val[0], config, cpu)))
    assert batch.ids[-1] == "silent" and batch.audio[-1].abs().sum() == 0 and batch.audio[0].abs().sum() > 0
