"""WebDataset shards: the writer (as is / presampled, atomic, resumable), the reader (same batches as the
files, split over ranks and workers, failures), positions for resuming, the VAST-27M converter."""

import json
import subprocess
import sys
import tarfile

import pytest
import torch
import webdataset

from vast.config import load_config
from vast.data import shards as shard_writer
from vast.data.loader import build_loader
from vast.data.shard_reader import ShardDataset, expand_shards, member_key
from vast.distributed import DistInfo
from vast.errors import ConfigError, DataError

from conftest import ROOT, demo_entry

CPU = DistInfo(0, 1, 0, torch.device("cpu"), None)


def write(corpus, out, txt="ret_test.json", *extra, audio=True):
    argv = ["write", "--txt", str(corpus / "annotations" / txt), "--vision", str(corpus / "videos"),
            "--out", str(out), *extra] + (["--audio", str(corpus / "audios")] if audio else [])
    assert shard_writer.main(argv) == 0
    return json.loads((out / "shards.json").read_text())


@pytest.fixture(scope="module")
def test_shards(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards_as_is")
    write(demo_corpus, out, "ret_test.json", "--shard_size", "3")
    return out


def shard_entry(shards, split, task="ret%tvas", **extra):
    entry = {"type": "shards", "name": "demo_shards", "shards": shards, "vision_format": "video_rawvideo",
             "vision_sample_num": 2, "audio_sample_num": 1, "task": task, "batch_size": 4, "n_workers": 0}
    if split == "train":
        entry["epoch"] = 1
    entry.update(extra)
    return entry


def loader_for(write_config, entry, split="val", dist=CPU, failures=None, name="cfg.json"):
    config = load_config(write_config([entry] if split == "train" else [], [entry] if split == "val" else [],
                                      name=name))
    return build_loader((config.train + config.val)[0], config, dist, failures=failures)


def test_writer_layout_and_index(demo_corpus, test_shards):
    index = json.loads((test_shards / "shards.json").read_text())
    rows = json.loads((demo_corpus / "annotations" / "ret_test.json").read_text())
    assert index["total"] == len(rows) and [s["samples"] for s in index["shards"]][:2] == [3, 3]
    assert index["media"] == "as_is" and not index["failed"]
    with tarfile.open(test_shards / "shard-000000.tar") as archive:  # readable by plain tar
        names = archive.getnames()
        record = json.loads(archive.extractfile(names[0]).read())
    first = rows[0]["video_id"]
    assert names[:3] == [f"{first}.json", f"{first}.mp4", f"{first}.wav"]
    assert record["clip_id"] == first and record["desc"] == rows[0]["desc"] and record["duration"] > 0
    assert record["subtitle"] == rows[0]["subtitle"] and record["source"] == f"{first}.mp4"
    samples = list(webdataset.WebDataset(str(test_shards / "shard-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [r["video_id"] for r in rows[:3]]  # readable by webdataset


def test_shards_give_the_same_batches_as_the_files(demo_corpus, test_shards, write_config):
    files = loader_for(write_config, demo_entry(demo_corpus, "val", "ret_test.json", "ret%tvas"), name="a.json")
    from_shards = loader_for(write_config, shard_entry(str(test_shards / "shards.json"), "val"), name="b.json")
    pairs = list(zip(files, from_shards, strict=True))
    assert len(pairs) == 4
    for a, b in pairs:
        assert a.ids == b.ids and a.texts == b.texts and a.subtitles == b.subtitles
        assert torch.equal(a.vision, b.vision) and torch.equal(a.audio, b.audio)


def test_training_items_draw_the_same_frames_and_captions(demo_corpus, test_shards, write_config):
    """Training order differs (sampler vs shard shuffle), but each clip decodes to the same tensors."""
    files = loader_for(write_config, demo_entry(demo_corpus, "train", "ret_test.json", "ret%tvas"), "train",
                       name="a.json")
    from_shards = loader_for(write_config, shard_entry(str(test_shards / "shards.json"), "train"), "train",
                             name="b.json")
    for loader in (files, from_shards):
        loader.set_epoch(1)

    def by_id(loader):
        return {clip: (batch.vision[i], batch.audio[i], batch.texts["tvas"].texts[i])
                for batch in loader for i, clip in enumerate(batch.ids)}

    a, b = by_id(files), by_id(from_shards)
    assert a.keys() == b.keys() and len(a) == 16
    for clip in a:
        assert torch.equal(a[clip][0], b[clip][0]) and torch.equal(a[clip][1], b[clip][1])
        assert a[clip][2] == b[clip][2]


def test_presampled_frames_keep_ids_texts_and_shapes(demo_corpus, test_shards, write_config, tmp_path):
    index = write(demo_corpus, tmp_path / "pre", "ret_test.json", "--media", "presampled", "--frames", "4",
                  "--frame_size", "48", "--shard_size", "5")
    assert index["media"] == "presampled" and index["frames"] == 4
    with tarfile.open(tmp_path / "pre" / "shard-000000.tar") as archive:
        members = archive.getnames()
    assert sum(name.endswith(".jpg") for name in members) == 4 * 5 and sum(n.endswith(".wav") for n in members) == 5
    as_is = loader_for(write_config, shard_entry(str(test_shards / "shards.json"), "val"), name="a.json")
    pre = loader_for(write_config, shard_entry(str(tmp_path / "pre" / "shards.json"), "val"), name="b.json")
    for a, b in zip(as_is, pre, strict=True):
        assert a.ids == b.ids and a.texts == b.texts and a.subtitles == b.subtitles
        assert a.vision.shape == b.vision.shape and a.audio.shape == b.audio.shape
        assert (a.audio - b.audio).abs().mean() < 0.05  # 16 kHz PCM16 wav, the same sound


def test_rerun_skips_complete_shards(demo_corpus, tmp_path):
    out = tmp_path / "s"
    first = write(demo_corpus, out, "ret_test.json", "--shard_size", "4")
    (out / "shard-000003.tar").unlink()  # as if killed while writing the last shard
    (out / "shards.json").unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    again = write(demo_corpus, out, "ret_test.json", "--shard_size", "4")
    assert again["total"] == first["total"] == 16 and len(again["shards"]) == 4
    assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())  # untouched
    assert not list(out.glob("*.tmp"))


def test_two_ranks_two_workers_read_every_clip_once(demo_corpus, test_shards, write_config):
    """Each (rank, worker) stream reads its own shards: per epoch no clip is lost or duplicated."""
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            dist = DistInfo(rank, 2, rank, torch.device("cpu"), None)
            loader = loader_for(write_config, shard_entry(str(test_shards / "shards.json"), "train", n_workers=2,
                                                          batch_size=4, shuffle_buffer=4), "train", dist=dist)
            loader.set_epoch(epoch)
            ids = [clip for batch in loader for clip in batch.ids]
            seen += ids
        assert len(seen) == 16 and len(set(seen)) == 16


def test_resuming_an_epoch_stream_continues_with_the_same_batches(test_shards, write_config):
    entry = shard_entry(str(test_shards / "shards.json"), "train", n_workers=2, batch_size=2, shuffle_buffer=4)
    whole = loader_for(write_config, entry, "train", name="a.json")
    whole.set_epoch(3)
    expected = [batch.ids for batch in whole]
    interrupted = loader_for(write_config, entry, "train", name="b.json")
    interrupted.set_epoch(3)
    iterator = iter(interrupted)
    done = [next(iterator).ids for _ in range(3)]
    state = json.loads(json.dumps(interrupted.state_dict()))  # what a checkpoint would hold
    resumed = loader_for(write_config, entry, "train", name="c.json")
    resumed.load_state_dict(state)
    assert done + [batch.ids for batch in resumed] == expected


def test_resampled_stream_state_is_the_rng_per_stream(test_shards, write_config):
    entry = shard_entry(str(test_shards / "shards.json"), "train", resampled=True, steps=10, shuffle_buffer=0)
    entry.pop("epoch")
    loader = loader_for(write_config, entry, "train")
    iterator = iter(loader)
    first = [next(iterator).ids for _ in range(5)]
    assert len({clip for ids in first for clip in ids}) > 4  # keeps drawing shards, no end of epoch
    state = loader.state_dict()
    assert set(state["streams"]) == {"0"} and "rng" in state["streams"]["0"]
    resumed = loader_for(write_config, entry, "train", name="b.json")
    resumed.load_state_dict(json.loads(json.dumps(state)))
    after = next(iter(resumed)).ids
    assert after  # continues from the saved generator: the shard drawn at that point comes first


def test_failing_shards_stop_evaluation_and_are_skipped_in_training(test_shards, write_config, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("shard-000000.tar", "shard-000001.tar"):
        (broken / name).write_bytes((test_shards / name).read_bytes())
    data = (test_shards / "shard-000002.tar").read_bytes()
    (broken / "shard-000002.tar").write_bytes(data[: len(data) // 2])  # truncated
    corrupt = bytearray((test_shards / "shard-000001.tar").read_bytes())
    corrupt[2048:2048 + 600] = b"\0" * 600  # inside the first clip's mp4 member
    (broken / "shard-000001.tar").write_bytes(bytes(corrupt))
    pattern = str(broken / "shard-{000000..000003}.tar")  # 000003 is missing
    with pytest.raises(DataError) as error:
        list(loader_for(write_config, shard_entry(pattern, "val", task="ret%tv")))
    assert "shard-00000" in str(error.value)
    loader = loader_for(write_config, shard_entry(pattern, "train", task="ret%tv", steps=1), "train")
    ids = [clip for batch in loader for clip in batch.ids]
    failures = [str(f) for f in loader.failure_log.first]
    assert loader.failure_log.count >= 2 and len(ids) >= 6
    assert any("shard-000003.tar" in f and "not found" in f for f in failures)
    assert any("shard-000002.tar" in f and "truncated" in f for f in failures)
    assert any("shard-000001.tar:demo_" in f and "corrupt" in f for f in failures)  # the damaged member


def test_shard_entry_keys_are_checked(write_config, tmp_path):
    with pytest.raises(ConfigError, match="'txt' does not apply"):
        load_config(write_config([], [shard_entry("x.tar", "val", txt="a.json")]))
    with pytest.raises(ConfigError, match="needs 'shards'"):
        load_config(write_config([], [shard_entry([], "val")]))
    resampled = shard_entry("x.tar", "train", resampled=True)
    with pytest.raises(ConfigError, match="give 'steps'"):
        load_config(write_config([resampled], []))


def test_brace_patterns_and_keys():
    urls, counts = expand_shards(["pipe:cat /data/s-{0..2}.tar"], "entry")
    assert urls == ["pipe:cat /data/s-0.tar", "pipe:cat /data/s-1.tar", "pipe:cat /data/s-2.tar"] and counts is None
    key = shard_writer.shard_key("v1.2/clip")
    assert "." not in key and "/" not in key and member_key(f"{key}.frame0001.jpg") == (key, "frame0001.jpg")


def test_pipe_urls_are_read(test_shards, write_config):
    pattern = f"pipe:cat {test_shards}/shard-{{000000..000005}}.tar"
    ids = [clip for batch in loader_for(write_config, shard_entry(pattern, "val")) for clip in batch.ids]
    assert len(ids) == 16


def test_vast27m_converter_and_captions_per_group(demo_corpus, write_config, tmp_path):
    out = tmp_path / "v27"
    result = subprocess.run([sys.executable, "-m", "vast.data.shards", "vast27m", "--txt",
                             str(demo_corpus / "annotations" / "vast27m_train.json"), "--vision",
                             str(demo_corpus / "videos"), "--out", str(out), "--shard_size", "4"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r["clip_id"]: r for r in json.loads((demo_corpus / "annotations" / "vast27m_train.json").read_text())}
    loader = loader_for(write_config, shard_entry(str(out / "shards.json"), "train", task="ret%tvas%tv%ta"), "train")
    batch = next(iter(loader))
    for i, clip in enumerate(batch.ids):
        assert batch.texts["tv"].texts[i] in rows[clip]["vision_cap"]
        assert batch.texts["ta"].texts[i] in rows[clip]["audio_cap"]
        assert batch.texts["tvas"].texts[i] in rows[clip]["vast_cap"] and batch.texts["tvas"].omni
    not_vast = subprocess.run([sys.executable, "-m", "vast.data.shards", "vast27m", "--txt",
                               str(demo_corpus / "annotations" / "ret_test.json"), "--vision",
                               str(demo_corpus / "videos"), "--out", str(tmp_path / "x")],
                              capture_output=True, text=True, cwd=ROOT)
    assert not_vast.returncode == 2 and "VAST-27M row needs" in not_vast.stderr and "Traceback" not in not_vast.stderr


def test_training_mixes_shards_and_files_under_torchrun(demo_corpus, test_shards, write_config, tmp_path):
    from test_cli import run, torchrun

    shards = shard_entry(str(test_shards / "shards.json"), "train", n_workers=1, steps=2, batch_size=4)
    shards.pop("epoch")
    files = demo_entry(demo_corpus, "train", "ret_train.json", "ret%tvas", batch_size=4, steps=1)
    files.pop("epoch")
    val = shard_entry(str(test_shards / "shards.json"), "val", batch_size=8)
    path = write_config([shards, files], [val], run={"log_steps": 1}, model={"itm_rerank_num": 4})
    out = tmp_path / "run"
    result = run(["--config", str(path), "--output_dir", str(out)], launcher=torchrun(2))
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "log" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and records[-1]["dataset"] == "demo_shards"
    assert "training 3 steps over 2 dataset(s)" in (out / "log" / "log.txt").read_text()


def test_shards_close_at_a_byte_budget(demo_corpus, tmp_path):
    index = write(demo_corpus, tmp_path / "b", "ret_test.json", "--shard_bytes", "300000")
    sizes = [s["bytes"] for s in index["shards"]]
    assert index["total"] == 16 and len(sizes) > 2
    assert all(300_000 <= size < 300_000 + 160_000 for size in sizes[:-1])  # one demo clip is < 160 kB
