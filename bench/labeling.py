"""Labeling throughput: clips/s per stage and end to end, in-process and on Ray Data, same clips, one run.

The input is the demo corpus's raw clips (3 s, 128x128, speech over a background sound); the
captioners are a VAST model of the demo's size (`label-captioners-demo.json`: eva_tiny, beats_tiny,
MiniLM BERT; random weights when no trained run folder is given, which costs the same per clip),
Whisper is the bundled tiny.en, the omni caption the template (or `--llm`). Each engine labels the
same clips into its own output folder from scratch; a stage's clips/s is clips over the busy seconds
that stage reported, its share is those seconds over all stages' busy seconds. Stages overlap (the
in-process decoder runs in loader workers, Ray runs stages as concurrent actor pools), so the end
to end rate is not the inverse of the sum.

    python bench/labeling.py --clips 32
    python bench/labeling.py --clips 32 --captioner output/demo/label-captioners-demo --llm bundled
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from vast.config import PROJECT_ROOT, load_config
from vast.data.demo_corpus import build_demo_corpus
from vast.labeling.config import load_label_config
from vast.labeling.pipeline import label_corpus


def random_captioner(folder: Path) -> Path:
    """A run folder (log/hps.json + ckpt/) holding a randomly initialised demo-size VAST model."""
    from vast.models.checkpoints import atomic_save
    from vast.models.vast import VAST

    if (folder / "ckpt").is_dir():
        return folder
    cfg = dict(load_config(PROJECT_ROOT / "config" / "vast" / "demo" / "label-captioners-demo.json").model_cfg)
    cfg["max_vision_sample_num"] = 4
    torch.manual_seed(0)
    (folder / "log").mkdir(parents=True, exist_ok=True)
    (folder / "log" / "hps.json").write_text(json.dumps({"run_cfg": {}, "model_cfg": cfg}))
    atomic_save(VAST(cfg).state_dict(), folder / "ckpt" / "model_step_1.pt")
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--engines", default="inprocess,ray")
    parser.add_argument("--captioner", default="", help="a trained captioner run folder (default: random weights)")
    parser.add_argument("--llm", default="")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "vast_bench_labeling"))
    args = parser.parse_args(argv)

    work = Path(args.workdir)
    corpus = work / f"corpus_{args.clips}"
    build_demo_corpus(corpus, num_clips=24, raw_clips=args.clips, workers=2)
    captioner = args.captioner or str(random_captioner(work / "captioner"))
    print(f"command: python bench/labeling.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"{args.clips} raw demo clips (3 s each); captioner {'random demo-size' if not args.captioner else captioner}; "
          f"omni: {args.llm or 'template'}; batch {args.batch_size}")
    reports = {}
    for engine in args.engines.split(","):
        out = work / f"out_{engine}"
        shutil.rmtree(out, ignore_errors=True)
        config = load_label_config({"vision_captioner": captioner, "audio_captioner": captioner, "frames": 4,
                                    "engine": engine, "llm": args.llm, "batch_size": args.batch_size,
                                    "shard_size": 16, "progress": False})
        started = time.perf_counter()
        reports[engine] = label_corpus(corpus / "raw", out, config)
        reports[engine]["measured_seconds"] = time.perf_counter() - started
        labels = json.loads((out / "annotations.json").read_text())
        reports[engine]["labels"] = labels

    for engine, report in reports.items():
        clips = report["labeled"]
        print(f"\n{engine}: {clips} clips in {report['measured_seconds']:.1f} s end to end "
              f"({clips / report['measured_seconds']:.2f} clips/s)")
        print(f"  {'stage':<16}{'busy s':>9}{'clips/s':>9}{'share':>8}")
        for stage, value in report["stages"].items():
            rate = clips / value["seconds"] if value["seconds"] else float("inf")
            print(f"  {stage:<16}{value['seconds']:>9.1f}{rate:>9.1f}{value['share'] * 100:>7.1f}%")
    if len(reports) == 2:
        a, b = reports.values()
        names = list(reports)
        print(f"\n{names[1]} / {names[0]} end to end: {a['measured_seconds'] / b['measured_seconds']:.2f}x; "
              f"identical labels: {a['labels'] == b['labels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
