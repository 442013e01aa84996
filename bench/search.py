"""`vast embed` / `vast search` costs: embed throughput on the demo corpus, the first stage's latency
(exact product against the FAISS HNSW graph) on synthetic vectors, and the matching-head rerank cost
per candidate.

- embed: `vast.search.embed.embed_folder` over the demo corpus's clips (decode in `--workers` loader
  processes, the model's contrastive features for every group, a thumbnail per clip), from a fresh
  index each time; alongside, the same clips decoded only, and the thumbnails made only (PyAV in
  process, as embed makes them, against an ffprobe + ffmpeg process pair), so the shares are visible. The model is `--model` (a run folder) or a random model of the demo's size.
- latency: `vast.search.query.exact_top` and `graph_top` (the functions `vast search` runs) for
  `--sizes` synthetic L2-normalised vectors of `--dim` dimensions drawn around 4,096 centres (real
  features cluster; uniform random vectors would make any graph look bad), each query an indexed
  vector plus a random vector of the same length (cosine about 0.7 with it), k = 50 (a search's pool: max(k, rerank)); p50/p99 over `--queries` queries, the graph's
  build time and its recall of the exact top 10 and top 50. Also the cold start at each size: an index
  folder written with `SearchIndex.add_shard`, then opened and its matrix read, as `vast search` does.
- rerank: `vast.search.query.search` over the demo's 64 test clips with `--rerank` 0 and 50; the
  difference per candidate, split into decoding the clips again and the matching head.
- check (`--check RUN`): for a fine-tuned retrieval run on the demo corpus (the demo's
  `output/vast/demo/retrieval-demo`), `vast search` R@1 over the test captions against the run's
  last evaluation (metrics.jsonl `t2v_itm`).

    python bench/search.py                                   # embed, latency (10k and 1M), rerank
    python bench/search.py --parts latency --sizes 10000,100000,1000000
    python bench/search.py --parts check --check output/vast/demo/retrieval-demo
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_loading import corpus  # noqa: E402  (the bench's demo corpus, built once)

from vast.config import PROJECT_ROOT, load_config  # noqa: E402
from vast.demo import subtitle_table  # noqa: E402
from vast.models.checkpoints import atomic_save  # noqa: E402
from vast.search import embed as embed_module  # noqa: E402
from vast.search.embed import EmbedSettings, embed_folder  # noqa: E402
from vast.search.index import (HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_NEIGHBOURS, ClipRecord,  # noqa: E402
                               SearchIndex, build_graph)
from vast.search.query import exact_top, graph_top, search  # noqa: E402

POOL = 50


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def random_run(folder: Path) -> Path:
    """A run folder (log/hps.json + ckpt/) holding a random model of the demo's size."""
    from vast.models.vast import VAST

    if not (folder / "ckpt").is_dir():
        torch.manual_seed(0)
        cfg = dict(load_config(PROJECT_ROOT / "config/vast/demo/retrieval-demo.json").model_cfg)
        (folder / "log").mkdir(parents=True, exist_ok=True)
        (folder / "log" / "hps.json").write_text(json.dumps({"run_cfg": {}, "model_cfg": cfg}))
        atomic_save(VAST(cfg).state_dict(), folder / "ckpt" / "model_step_1.pt")
    return folder


def test_clip_folder(data: Path, out: Path) -> tuple[Path, list[dict]]:
    rows = json.loads((data / "annotations" / "ret_test.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        target = out / f"{row['video_id']}.mp4"
        if not target.exists():
            shutil.copy(data / "videos" / f"{row['video_id']}.mp4", target)
    return out, rows


def bench_embed(args, data: Path, model: Path, scratch: Path) -> None:
    from vast.api import load_model

    videos = data / "videos"
    clips = sorted(videos.glob("*.mp4"))
    subtitles = subtitle_table(data, scratch / "subtitles.json")
    print(f"\n## embed: {len(clips)} demo clips (128x128, 10 fps, 3 s), {args.frames} frames + 1 audio slice, "
          f"batch 8, model {model}")
    for workers in args.workers:
        out = scratch / f"index_w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        settings = EmbedSettings(frames=args.frames, audio_clips=1, subtitles=str(subtitles), batch_size=8,
                                 workers=workers)
        start = time.perf_counter()
        report = embed_folder(videos, model, out, settings, progress=False)
        seconds = time.perf_counter() - start
        groups = SearchIndex.open(out).groups
        print(f"  embed_folder, {workers} loader workers: {len(report.embedded) / seconds:6.1f} clips/s "
              f"({len(report.embedded)} clips in {seconds:.1f} s, groups {','.join(groups)}, model load included)")
    loaded = load_model(model)
    cfg = loaded.model_cfg
    from vast.data import media

    mean, std = media.vision_normalisation(cfg["vision_encoder_type"])
    decoder = embed_module._ClipDecoder(
        [(p.stem, p) for p in clips],
        media.VisionSpec(format="video_rawvideo", sample_num=args.frames, resolution=int(cfg["vision_resolution"]),
                         mean=mean, std=std),
        media.AudioSpec(sample_num=1, melbins=int(cfg["audio_melbins"]), target_length=int(cfg["audio_target_length"])))
    start = time.perf_counter()
    for i in range(len(decoder)):
        decoder[i]
    decode = (time.perf_counter() - start) / len(clips)
    thumbs = scratch / "thumbs"
    pyav_s, ffmpeg_s = [], []
    for path in clips[:64]:  # alternate the two ways, so drifts of a shared machine hit both
        start = time.perf_counter()
        embed_module.make_thumbnail(path, thumbs / f"{path.stem}.jpg")
        pyav_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        ffmpeg_thumbnail(path, thumbs / f"{path.stem}.ffmpeg.jpg")
        ffmpeg_s.append(time.perf_counter() - start)
    pyav, ffmpeg = statistics.median(pyav_s), statistics.median(ffmpeg_s)
    print(f"  per clip, in this process: decoding {1000 * decode:.1f} ms; thumbnail {1000 * pyav:.1f} ms "
          f"(PyAV, what embed does) against {1000 * ffmpeg:.1f} ms (ffprobe + ffmpeg processes), "
          f"{ffmpeg / pyav:.1f}x (medians over 64 clips)")


def ffmpeg_thumbnail(path: Path, target: Path) -> None:
    """The alternative to make_thumbnail: the same frame by an ffprobe and an ffmpeg process."""
    from vast.data.sources import probe_duration

    middle = probe_duration(path) / 2
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-ss", f"{middle:.3f}", "-i", str(path), "-frames:v", "1",
                    "-vf", f"scale={embed_module.THUMBNAIL_WIDTH}:-2", str(target)], check=True)


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> torch.Tensor:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centres[rng.integers(0, len(centres), m)] + 0.35 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return torch.from_numpy(out)


def cold_start(matrix: torch.Tensor, scratch: Path) -> tuple[float, float]:
    """Seconds to open an index folder of these vectors and read its matrix; MB on disk."""
    folder = scratch / f"cold_{len(matrix)}"
    shutil.rmtree(folder, ignore_errors=True)
    index = SearchIndex.create(folder, "model", ["tvas"], {"frames": 8, "audio_clips": 1, "subtitles": "none"})
    ids = [f"clip_{i:07d}" for i in range(len(matrix))]
    records = [ClipRecord(i, f"/videos/{i}.mp4", 1_000_000, 1.7e9, "", f"thumbs/{i}.jpg") for i in ids]
    index.add_shard({"tvas": (ids, matrix.numpy())}, records)
    index.save()
    start = time.perf_counter()
    opened = SearchIndex.open(folder)
    opened.features("tvas")
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    shutil.rmtree(folder)
    return seconds, size


def bench_latency(args, scratch: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4096, args.dim), dtype=np.float32)
    print(f"\n## first stage: top {POOL} of one query, {args.dim}-d float32, {args.queries} queries, "
          f"{torch.get_num_threads()} threads; HNSW M={HNSW_NEIGHBOURS}, efConstruction={HNSW_EF_CONSTRUCTION}, "
          f"efSearch as given (vast search uses {max(HNSW_EF_SEARCH, 2 * POOL)} for a pool of {POOL})")
    print(f"  {'vectors':>9}  {'exact p50':>9}  {'exact p99':>9}  {'efSearch':>8}  {'faiss p50':>9}  {'faiss p99':>9}  "
          f"{'exact/faiss':>11}  {'recall@10':>9}  {'recall@50':>9}  {'build':>8}  {'cold start':>10}  {'on disk':>8}")
    for n in args.sizes:
        matrix = clustered(n, args.dim, rng, centres)
        picks = rng.integers(0, n, args.queries)
        # a noise vector as long as the indexed one: each query's cosine with the vector it was made from is
        # about 0.7, near a neighbourhood without copying one of its points
        noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32) / np.float32(np.sqrt(args.dim))
        queries = matrix[picks].numpy() + noise
        queries = torch.from_numpy(queries / np.linalg.norm(queries, axis=1, keepdims=True))
        start = time.perf_counter()
        graph = build_graph(matrix)
        build = time.perf_counter() - start
        seconds, size = cold_start(matrix, scratch)
        for ef in args.ef:
            exact_ms, graph_ms, recall10, recall50 = [], [], [], []
            for query in queries:  # alternate the two, so drifts of a shared machine hit both
                start = time.perf_counter()
                truth, _ = exact_top(matrix, query, POOL)
                exact_ms.append(1000 * (time.perf_counter() - start))
                start = time.perf_counter()
                found, _ = graph_top(graph, matrix, query, POOL, ef_search=ef)
                graph_ms.append(1000 * (time.perf_counter() - start))
                recall10.append(len(set(truth[:10].tolist()) & set(found[:10].tolist())) / 10)
                recall50.append(len(set(truth.tolist()) & set(found.tolist())) / POOL)
            ratio = statistics.median(exact_ms) / statistics.median(graph_ms)
            print(f"  {n:>9,}  {percentile(exact_ms, 50):7.2f}ms  {percentile(exact_ms, 99):7.2f}ms  {ef:>8}  "
                  f"{percentile(graph_ms, 50):7.2f}ms  {percentile(graph_ms, 99):7.2f}ms  {ratio:10.1f}x  "
                  f"{statistics.mean(recall10):9.3f}  {statistics.mean(recall50):9.3f}  {build:7.1f}s  "
                  f"{seconds:9.2f}s  {size:6.0f}MB", flush=True)
        del matrix, graph


def bench_rerank(args, data: Path, model_path: Path, scratch: Path) -> None:
    from vast.api import load_model
    from vast.search.query import decode_for_matching
    from vast.tasks import ModalityGroup

    folder, rows = test_clip_folder(data, scratch / "test_clips")
    out = scratch / "test_index"
    shutil.rmtree(out, ignore_errors=True)
    embed_folder(folder, model_path, out, EmbedSettings(frames=args.frames, subtitles=str(data / "annotations" /
                                                                                           "ret_test.json")),
                 progress=False)
    index = SearchIndex.open(out)
    model = load_model(model_path, precision=index.precision)
    queries = [row["desc"] if isinstance(row["desc"], str) else row["desc"][0] for row in rows][:args.rerank_queries]
    print(f"\n## rerank: tvas, {len(index.clips)} clips, {args.frames} frames, {len(queries)} queries, "
          f"model {model_path}")
    timings = {0: [], POOL: []}
    for query in queries:
        for rerank_k in timings:
            start = time.perf_counter()
            search(model, index, query, k=10, group="tvas", rerank_k=rerank_k)
            timings[rerank_k].append(time.perf_counter() - start)
    plain, reranked = statistics.median(timings[0]), statistics.median(timings[POOL])
    group = ModalityGroup.parse("tvas")
    ids = list(index.clips)[:POOL]
    decode_s, match_s = [], []
    for query in queries[:5]:
        start = time.perf_counter()
        vision, audio, subtitles = decode_for_matching(model, index, ids, group)
        decode_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.match([query], group, vision=vision, audio=audio, subtitles=subtitles)
        match_s.append(time.perf_counter() - start)
    print(f"  search, rerank 0: {1000 * plain:.1f} ms   rerank {POOL}: {1000 * reranked:.1f} ms   "
          f"per candidate: {1000 * (reranked - plain) / POOL:.1f} ms (medians)")
    print(f"  of which per candidate: decoding again {1000 * statistics.median(decode_s) / POOL:.1f} ms, "
          f"matching head {1000 * statistics.median(match_s) / POOL:.1f} ms")


def bench_check(args, data: Path, scratch: Path) -> None:
    """vast search R@1 on the demo test split against the run's own evaluation."""
    from vast.api import load_model
    from vast.search.commands import _sample_nums

    run = Path(args.check)
    record = [json.loads(line) for line in (run / "log" / "metrics.jsonl").read_text().splitlines()
              if '"tvas"' in line and "t2v_itm" in line][-1]
    frames, audio_clips = _sample_nums(str(run))
    folder, rows = test_clip_folder(data, scratch / "test_clips")
    out = scratch / "check_index"
    shutil.rmtree(out, ignore_errors=True)
    embed_folder(folder, run, out, EmbedSettings(frames=frames, audio_clips=audio_clips,
                                                 subtitles=str(data / "annotations" / "ret_test.json")),
                 progress=False)
    index = SearchIndex.open(out)
    model = load_model(run, precision=index.precision)
    rerank_k = int(model.model_cfg["itm_rerank_num"])
    queries = [(text, row["video_id"]) for row in rows for text in ([row["desc"]] if isinstance(row["desc"], str)
                                                                      else row["desc"])]
    itc = itm = 0
    for text, owner in queries:
        itc += search(model, index, text, k=1, group="tvas", rerank_k=0)[0].id == owner
        itm += search(model, index, text, k=1, group="tvas", rerank_k=rerank_k)[0].id == owner
    metrics = record["metrics"]
    print(f"\n## check: {run}, tvas, {len(queries)} test captions over {len(index.clips)} clips, {frames} frames, "
          f"precision {index.precision} ({model.run_precision})")
    print(f"  vast search --rerank 0:  R@1 {100 * itc / len(queries):.1f}   evaluation t2v_itc R@1 "
          f"{metrics['t2v_itc']['r1']}")
    print(f"  vast search --rerank {rerank_k}: R@1 {100 * itm / len(queries):.1f}   evaluation t2v_itm R@1 "
          f"{metrics['t2v_itm']['r1']}   (step {record['step']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="embed,latency,rerank", help="embed, latency, rerank, check")
    parser.add_argument("--model", default="", help="a run folder (default: a random model of the demo's size)")
    parser.add_argument("--check", default="", help="a fine-tuned retrieval run on the demo corpus (part check)")
    parser.add_argument("--data_dir", default="", help="a demo corpus (default: built once in the temp folder)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--workers", default="0,2", help="loader workers to embed with, comma-separated")
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--dim", type=int, default=512, help="contra_dim (512 in the released model)")
    parser.add_argument("--ef", default="128,512,2048", help="HNSW efSearch values, comma-separated")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rerank_queries", type=int, default=16)
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.ef = [int(e) for e in args.ef.split(",")]
    parts = args.parts.split(",")
    argv = " ".join(sys.argv[1:])
    print(f"command: python bench/search.py{' ' + argv if argv else ''}")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    scratch = Path(tempfile.mkdtemp(prefix="vast_bench_search_"))
    try:
        data = Path(args.data_dir) if args.data_dir else None
        if {"embed", "rerank", "check"} & set(parts) and data is None:
            data = corpus(argparse.Namespace(corpus="", clips=320))
        model = Path(args.model) if args.model else None
        if {"embed", "rerank"} & set(parts) and model is None:
            model = random_run(scratch / "random_run")
        if "embed" in parts:
            bench_embed(args, data, model, scratch)
        if "latency" in parts:
            bench_latency(args, scratch)
        if "rerank" in parts:
            bench_rerank(args, data, model, scratch)
        if "check" in parts:
            bench_check(args, data, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
