"""`vast embed / search / caption / ask`: an index of the demo clips ranks as retrieval evaluation
ranks, reruns are incremental, and every command speaks JSON and one-line errors."""

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import demo_entry
from test_cli import run
from vast.search.commands import main
from vast.search.index import SearchIndex

ROOT = Path(__file__).resolve().parent.parent
FRAMES = 4


@pytest.fixture(scope="module")
def test_clips(demo_corpus, tmp_path_factory):
    """The retrieval test split's videos in a folder of their own (evaluation ranks among them)."""
    rows = json.loads((demo_corpus / "annotations" / "ret_test.json").read_text())
    folder = tmp_path_factory.mktemp("clips")
    for row in rows:
        shutil.copy(demo_corpus / "videos" / f"{row['video_id']}.mp4", folder)
    return folder, rows


@pytest.fixture(scope="module")
def index_dir(test_clips, captioner_run, demo_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("index") / "index"
    code = main(["embed", str(test_clips[0]), "--model", str(captioner_run), "--out", str(folder),
                 "--subtitles", str(demo_corpus / "annotations" / "ret_test.json"), "--frames", str(FRAMES),
                 "--workers", "1", "--json"])
    assert code == 0
    return folder


def json_out(capsys, argv) -> dict:
    capsys.readouterr()
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_search_ranks_as_retrieval_evaluation(index_dir, test_clips, captioner_run, demo_corpus, write_config,
                                              tmp_path, capsys):
    """R@1 of `vast search` over the test captions equals evaluation's t2v_itm R@1 of the same model."""
    val = [demo_entry(demo_corpus, "val", "ret_test.json", "ret%tvas", vision_sample_num=FRAMES)]
    config = write_config([], val, run={"pretrain_dir": str(captioner_run)})
    out = tmp_path / "eval"
    result = run(["--config", str(config), "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "log" / "metrics.jsonl").read_text().splitlines()[-1])
    expected_r1 = record["metrics"]["t2v_itm"]["r1"]

    index = SearchIndex.open(index_dir)
    assert set(index.clips) == {row["video_id"] for row in test_clips[1]} and "tvas" in index.groups
    queries = [(caption, row["video_id"]) for row in test_clips[1]
               for caption in ([row["desc"]] if isinstance(row["desc"], str) else row["desc"])]
    hits = 0
    for caption, owner in queries:
        found = json_out(capsys, ["search", str(index_dir), caption, "-k", "1", "--group", "tvas"])["hits"]
        hits += found[0]["id"] == owner
    r1 = 100 * hits / len(queries)
    print(f"search R@1 {r1:.2f} over {len(queries)} queries; evaluation t2v_itm R@1 {expected_r1}")
    assert abs(r1 - expected_r1) <= 100 / len(queries) + 1e-6, (r1, expected_r1)  # float16 storage: one tie at most


def test_embed_is_incremental(index_dir, test_clips, captioner_run, demo_corpus, capsys):
    args = ["embed", str(test_clips[0]), "--model", str(captioner_run), "--out", str(index_dir),
            "--subtitles", str(demo_corpus / "annotations" / "ret_test.json"), "--frames", str(FRAMES), "--workers", "0"]
    again = json_out(capsys, args)
    assert again["embedded"] == [] and again["unchanged"] == len(test_clips[1])
    extra = test_clips[0] / "new_clip.mp4"
    shutil.copy(demo_corpus / "videos" / "demo_0000.mp4", extra)
    try:
        added = json_out(capsys, args)
        assert added["embedded"] == ["new_clip"] and added["unchanged"] == len(test_clips[1])
        index = SearchIndex.open(index_dir)
        ids, matrix = index.features("tvas")
        assert "new_clip" in ids and matrix.shape[0] == len(test_clips[1]) + 1 and index.shards == 2
        thumbnail = index_dir / index.clips["new_clip"].thumbnail
        assert thumbnail.is_file()
    finally:
        extra.unlink()
    gone = json_out(capsys, args)  # the file is gone: its clip leaves the index, the others stay
    assert gone["removed"] == ["new_clip"] and gone["embedded"] == [] and gone["unchanged"] == len(test_clips[1])
    index = SearchIndex.open(index_dir)
    assert "new_clip" not in index.clips and "new_clip" not in index.features("tvas")[0] and not thumbnail.exists()


def test_graph_first_stage_finds_the_exact_candidates(index_dir):
    """The FAISS HNSW first stage (large indexes) returns the exact product's candidates, scored alike,
    and keeps its graph beside the shards for the next search."""
    pytest.importorskip("faiss")
    import torch

    from vast.search.query import candidates, exact_top, graph_top

    index = SearchIndex.open(index_dir)
    ids, matrix = index.features("tvas")
    for row in range(0, len(ids), 7):
        query = matrix[row] + 0.5 * matrix[(row + 1) % len(ids)]
        query = query / query.norm()
        exact_rows, exact_scores = exact_top(matrix, query, 10)
        graph_rows, graph_scores = graph_top(index.graph("tvas"), matrix, query, 10)
        assert set(graph_rows.tolist()) == set(exact_rows.tolist())
        assert torch.allclose(graph_scores, exact_scores)  # best first, scored as the exact product scores
        assert set(candidates(index, "tvas", query, 10, use_faiss=True)[1].tolist()) == set(exact_rows.tolist())
    assert len(list((index_dir / "faiss").glob("tvas.*.hnsw"))) == 1
    assert not index.uses_graph("tvas")  # a small index ranks exactly


def test_caption_and_ask_use_the_evaluation_settings(captioner_run, demo_corpus, capsys):
    from vast.api import load_model
    from vast.models.generation import caption_generation_config

    video = str(demo_corpus / "videos" / "demo_0001.mp4")
    captions = json_out(capsys, ["caption", video, "--model", str(captioner_run), "--group", "tva"])
    model = load_model(captioner_run)
    vision, audio = model.load_clips([video], [video], vision_sample_num=8)
    assert caption_generation_config(model.model_cfg).beam_size == model.model_cfg["beam_size"]
    assert captions["captions"][video] == model.caption("tva", vision=vision, audio=audio)[0]
    answer = json_out(capsys, ["ask", video, "what is the word", "--model", str(captioner_run)])
    assert answer["question"] == "what is the word" and isinstance(answer["answer"], str)


def test_mistakes_are_one_line(tmp_path, captioner_run):
    cases = [["search", str(tmp_path / "nowhere"), "a dog"],
             ["embed", str(tmp_path / "no_videos"), "--model", str(captioner_run), "--out", str(tmp_path / "i")],
             ["caption", str(tmp_path / "missing.mp4"), "--model", str(captioner_run)]]
    for argv in cases:
        result = subprocess.run([sys.executable, "-m", "vast.search.commands", *argv], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_console_script_is_installed():
    result = subprocess.run([str(Path(sys.executable).parent / "vast"), "search", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "--rerank" in result.stdout


@contextlib.contextmanager
def page_server(index_dir):
    """(index, base URL) of `vast serve`'s app over the index, on a free port of 127.0.0.1, in a thread."""
    import uvicorn

    from vast.search.server import create_app, load_for_serving

    index, model = load_for_serving(index_dir)
    server = uvicorn.Server(uvicorn.Config(create_app(index, model), host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield index, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_page_server_serves_only_indexed_files(index_dir):
    """The search page's API: ranked hits, range requests for the clips, 404 for anything the index
    does not record (traversal included), limits on query length and body size."""
    with page_server(index_dir) as (index, base):

        def get(path, headers=None, data=None):
            request = urllib.request.Request(base + path, headers=headers or {}, data=data)
            try:
                with urllib.request.urlopen(request) as response:
                    return response.status, response.read(), dict(response.headers)
            except urllib.error.HTTPError as error:
                return error.code, error.read(), dict(error.headers)

        status, body, _ = get("/")
        assert status == 200 and b"vast search" in body
        status, body, _ = get("/api/search?q=a%20red%20circle&group=tvas&k=3")
        assert status == 200, body
        hits = json.loads(body)["hits"]
        assert len(hits) == 3 and {h["id"] for h in hits} <= set(index.clips)
        status, body, headers = get(hits[0]["video"], {"Range": "bytes=0-99"})
        assert status == 206 and len(body) == 100 and headers["content-range"].startswith("bytes 0-99/")
        assert get(hits[0]["thumbnail"])[0] == 200
        for path in ("/video/..%2F..%2Fetc%2Fpasswd", "/video/../index.json", "/thumb/..%2Findex.json",
                     "/video/nope", "/static/../index.json"):
            assert get(path)[0] == 404, path
        assert get("/api/search?q=" + "a" * 600)[0] == 400
        assert get("/api/search?q=dog&group=tz")[0] == 400
        big = json.dumps({"id": hits[0]["id"], "question": "x" * 5000}).encode()
        assert get("/api/ask", {"Content-Type": "application/json"}, big)[0] == 413
        status, body, _ = get("/api/ask", {"Content-Type": "application/json"},
                              json.dumps({"id": hits[0]["id"], "group": "tvas", "question": "what is said"}).encode())
        assert status == 200 and isinstance(json.loads(body)["answer"], str)
