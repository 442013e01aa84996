"""Loading throughput: clips/s for 8 frames + 1 audio slice per clip from raw files, from shards with
media as is, and from shards with pre-sampled frames, against the decode limit measured in the same run.

The decode limit is PyAV decoding the same files in one process, sequentially: for each clip the 8
frames the loader samples (`vast.data.media.read_video_frames`, decode only) and its audio track
(`load_waveform`), without resizing, normalisation or the filterbank. The three loaders run the
project's own `Loader` (the same code as training: decode, crop, normalise, fbank, collate) with
`--workers` loader processes, evaluation sampling (so the work per clip is fixed), rounds alternating
so that drifts of a shared machine hit every method alike; the median round is reported.

The demo clips are tiny (128x128, 10 fps, 3 s), so fixed per-clip costs weigh more than they
would on real videos; `--video_size 640x360 --seconds 10` re-encodes the training clips with
ffmpeg (H.264 + AAC, 25 fps, looped) into a corpus of that size first.

    python bench/data_loading.py --clips 320 --workers 1             # 256 demo training clips
    python bench/data_loading.py --clips 120 --workers 1 --video_size 640x360 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vast.config import PROJECT_ROOT, load_config
from vast.data import media
from vast.data.demo_corpus import build_demo_corpus
from vast.data.loader import build_loader
from vast.data.shards import main as write_shards
from vast.distributed import DistInfo

CPU = DistInfo(0, 1, 0, torch.device("cpu"), None)


def corpus(args) -> Path:
    folder = Path(args.corpus or Path(tempfile.gettempdir()) / f"vast_bench_corpus_{args.clips}")
    if not (folder / "MANIFEST.json").is_file():
        print(f"building a demo corpus of {args.clips} clips in {folder} ...", flush=True)
        build_demo_corpus(folder, num_clips=args.clips, seed=0, workers=2)
    return folder


def resized(folder: Path, args) -> Path:
    """The training clips re-encoded at --video_size, 25 fps, looped to --seconds (made once)."""
    out = folder.parent / f"{folder.name}_{args.video_size}_{args.seconds}s"
    if (out / "done").is_file():
        return out
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(exist_ok=True)
    rows = json.loads((folder / "annotations" / "ret_train.json").read_text())
    print(f"re-encoding {len(rows)} clips at {args.video_size}, {args.seconds} s ...", flush=True)
    width, height = args.video_size.split("x")
    for row in rows:
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i",
                        str(folder / "videos" / f"{row['video_id']}.mp4"), "-t", str(args.seconds),
                        "-vf", f"scale={width}:{height},fps=25", "-c:v", "libx264", "-preset", "veryfast",
                        "-pix_fmt", "yuv420p", "-c:a", "aac", "-ar", "44100",
                        str(out / "videos" / f"{row['video_id']}.mp4")], check=True)
    (out / "annotations" / "ret_train.json").write_text(json.dumps(rows))
    (out / "done").write_text("")
    return out


def shard_sets(folder: Path, args) -> dict[str, Path]:
    sets = {}
    for mode in ("as_is", "presampled"):
        out = folder / f"bench_shards_{mode}"
        if not (out / "shards.json").is_file():
            code = write_shards(["write", "--txt", str(folder / "annotations" / "ret_train.json"), "--vision",
                                 str(folder / "videos"), "--out", str(out), "--shard_size", str(args.shard_size),
                                 "--media", mode, "--frames", str(args.frames), "--frame_size", str(args.resolution),
                                 "--workers", "2"])
            if code != 0:
                sys.exit(f"writing the {mode} shards failed")
        sets[mode] = out
    return sets


def make_loader(entry: dict, args, tmp: Path):
    config = {"run_cfg": {"default": str(PROJECT_ROOT / "config/vast/default_run_cfg.json"), "mode": "testing"},
              "model_cfg": {"default": str(PROJECT_ROOT / "config/vast/default_model_cfg.json"),
                            "vision_resolution": args.resolution},
              "data_cfg": {"train": [], "val": [entry]}}
    path = tmp / f"{entry['name']}.json"
    path.write_text(json.dumps(config))
    loaded = load_config(path)
    return build_loader(loaded.val[0], loaded, CPU)


def common(args) -> dict:
    return {"vision_format": "video_rawvideo", "vision_sample_num": args.frames, "audio_sample_num": 1,
            "task": "ret%tva", "batch_size": args.batch, "n_workers": args.workers}


def clips_per_second(loader) -> tuple[float, int]:
    started, clips = time.perf_counter(), 0
    for batch in loader:
        batch.to("cpu")  # uint8 frames -> normalised float32: a GPU run does this on the GPU
        clips += len(batch)
    return clips / (time.perf_counter() - started), clips


def decode_limit(folder: Path, ids: list[str], frames: int) -> float:
    started = time.perf_counter()
    for clip in ids:
        path = folder / "videos" / f"{clip}.mp4"
        media.read_video_frames(path, frames, False, random.Random(0))
        media.load_waveform(path)
    return len(ids) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="", help="a demo corpus folder (built when missing)")
    parser.add_argument("--clips", type=int, default=64, help="clips of the demo corpus to build")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--shard_size", type=int, default=16)
    parser.add_argument("--video_size", default="", help="WxH: re-encode the clips at this size first")
    parser.add_argument("--seconds", type=float, default=10, help="with --video_size: clip length")
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = corpus(args)
    if args.video_size:
        folder = resized(folder, args)
    sets = shard_sets(folder, args)
    ids = [row["video_id"] for row in json.loads((folder / "annotations" / "ret_train.json").read_text())]
    tmp = Path(tempfile.mkdtemp())
    methods = {
        "raw files": {"type": "annoindexed", "name": "raw", "txt": str(folder / "annotations" / "ret_train.json"),
                      "vision": str(folder / "videos")},
        "shards, as is": {"type": "shards", "name": "as_is", "shards": str(sets["as_is"] / "shards.json")},
        "shards, presampled": {"type": "shards", "name": "presampled",
                               "shards": str(sets["presampled"] / "shards.json")},
    }
    rates: dict[str, list[float]] = {name: [] for name in [*methods, "decode limit (1 process)"]}
    for _ in range(args.rounds):
        for name, entry in methods.items():
            rate, clips = clips_per_second(make_loader({**entry, **common(args)}, args, tmp))
            assert clips == len(ids), (name, clips)
            rates[name].append(rate)
        rates["decode limit (1 process)"].append(decode_limit(folder, ids, args.frames))
    median = {name: statistics.median(values) for name, values in rates.items()}
    limit = median["decode limit (1 process)"]
    print("command: python bench/data_loading.py " + " ".join(sys.argv[1:]))
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {args.workers} loader workers, "
          f"{len(ids)} clips of {folder.name}, {args.frames} frames at {args.resolution} px + 1 audio slice, "
          f"median of {args.rounds} rounds")
    for name, value in median.items():
        print(f"  {name:<26} {value:7.1f} clips/s   (rounds: {', '.join(f'{v:.1f}' for v in rates[name])})")
    print(f"presampled shards / raw files: {median['shards, presampled'] / median['raw files']:.2f}x (target >= 2)")
    per_worker = median["shards, as is"] / args.workers
    print(f"shards as is per worker / decode limit: {per_worker / limit:.2f}x (target >= 0.8)")
    print(f"shards as is / raw files: {median['shards, as is'] / median['raw files']:.2f}x")


if __name__ == "__main__":
    main()
