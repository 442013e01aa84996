"""Captioner mode through run.py, as the original's caption-generation configs run it: each rank
writes its clips' sampled captions to its own chunk as batches finish, and rank 0 merges the chunks
into one `{id: [captions]}` file in meta.json order, with one python process and under torchrun."""

import json

from vast.evaluation.captioning import merge_caption_chunks

from conftest import demo_entry
from test_cli import run, torchrun

GENERATE_NUMS = 3
CLIPS = 5  # odd, so the two ranks of the torchrun run hold different numbers of clips


def captioner_config(demo_corpus, write_config, tmp_path):
    """A meta.json of the first few demo ids (the corpus's `captioner_meta` layout) in captioner mode."""
    ids = [row["video_id"] for row in json.loads((demo_corpus / "annotations" / "captioner_meta.json").read_text())]
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps([{"video_id": clip} for clip in ids[:CLIPS]]))
    entry = demo_entry(demo_corpus, "val", str(meta), "cap%tv", name="labels", batch_size=4)
    config = write_config(val=[entry], model={"captioner_mode": True, "generate_nums": GENERATE_NUMS,
                                              "max_caption_len": 6})
    return config, ids[:CLIPS]


def read_chunk(path):
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(len(row) == 1 for row in rows)  # one clip a line
    return [next(iter(row)) for row in rows], {k: v for row in rows for k, v in row.items()}


def assert_captions(captions: dict):
    for clip, texts in captions.items():
        assert len(texts) == GENERATE_NUMS and all(isinstance(t, str) and t.strip() for t in texts), (clip, texts)


def test_one_process_writes_its_chunk_and_the_merged_file(demo_corpus, write_config, tmp_path):
    config, ids = captioner_config(demo_corpus, write_config, tmp_path)
    out = tmp_path / "out"
    chunks = out / "log" / "captions_labels_tv_step0"
    # left by an earlier run into the same folder: truncated (rank 0) and removed (rank 1 of a wider run)
    chunks.mkdir(parents=True)
    (chunks / "rank0.jsonl").write_text(json.dumps({ids[0]: ["stale"] * GENERATE_NUMS}) + "\n")
    (chunks / "rank1.jsonl").write_text(json.dumps({"gone": ["stale"] * GENERATE_NUMS}) + "\n")
    result = run(["--config", str(config), "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in chunks.iterdir()) == ["rank0.jsonl"]
    order, chunk = read_chunk(chunks / "rank0.jsonl")
    assert order == ids
    merged = json.loads((out / "log" / "captions_labels_tv_step0.json").read_text(encoding="utf-8"))
    assert list(merged) == ids and merged == chunk
    assert_captions(merged)
    assert not list((out / "log").glob("predictions_*"))  # captions are written once, not also gathered


def test_two_processes_write_their_own_chunks_and_rank0_merges(demo_corpus, write_config, tmp_path):
    config, ids = captioner_config(demo_corpus, write_config, tmp_path)
    out = tmp_path / "out"
    result = run(["--config", str(config), "--output_dir", str(out)], launcher=torchrun(2))
    assert result.returncode == 0, result.stderr[-3000:]
    chunks = out / "log" / "captions_labels_tv_step0"
    assert sorted(p.name for p in chunks.iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    order0, chunk0 = read_chunk(chunks / "rank0.jsonl")
    order1, chunk1 = read_chunk(chunks / "rank1.jsonl")
    assert order0 == ids[0::2] and order1 == ids[1::2]  # each rank holds its own clips only
    merged = json.loads((out / "log" / "captions_labels_tv_step0.json").read_text(encoding="utf-8"))
    assert list(merged) == ids and merged == {**chunk0, **chunk1}
    assert_captions(merged)
    assert "captions of 5 clips written to" in (out / "log" / "log.txt").read_text()


def test_merge_keeps_a_padded_clip_once_in_stride_order(tmp_path):
    """A sampler that pads the last round (DistributedSampler) repeats the first clips on later ranks."""
    chunks = {0: [("a", ["a1"]), ("c", ["c1"]), ("e", ["é"])], 1: [("b", ["b1"]), ("d", ["d1"]), ("a", ["again"])]}
    for rank, rows in chunks.items():
        (tmp_path / f"rank{rank}.jsonl").write_text(
            "".join(json.dumps({clip: texts}, ensure_ascii=False) + "\n" for clip, texts in rows), encoding="utf-8")
    merged = tmp_path / "merged.json"
    assert merge_caption_chunks(tmp_path, 2, merged) == 5
    captions = json.loads(merged.read_text(encoding="utf-8"))
    assert captions == {"a": ["a1"], "b": ["b1"], "c": ["c1"], "d": ["d1"], "e": ["é"]}
    assert list(captions) == ["a", "b", "c", "d", "e"]
    assert not list(tmp_path.glob("*.partial"))
