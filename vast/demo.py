"""The embedded demo: build the synthetic corpus, run every demo config on it, print a summary.

`bash scripts/vast/demo.sh` (or `python -m vast.demo`) is the README's main command. It needs no
download: the corpus is generated locally (datasets/demo/) and the demo configs live in
config/vast/demo/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vast.cli import USER_ERROR_EXIT, execute
from vast.config import PROJECT_ROOT, load_config
from vast.data.demo_corpus import build_demo_corpus
from vast.engine import distributed
from vast.engine.logging import setup_logging
from vast.errors import VastError

DEMO_CONFIGS = ("pretrain-demo", "retrieval-demo", "caption-demo", "qa-demo", "captioner-demo")


def corpus_summary(manifest: dict) -> list[str]:
    clips = manifest["clips"]
    durations = [clip["duration"] for clip in clips.values()]
    splits = {}
    for clip in clips.values():
        splits[clip["split"]] = splits.get(clip["split"], 0) + 1
    return [
        f"clips: {len(clips)} ({', '.join(f'{n} {s}' for s, n in sorted(splits.items()))}), "
        f"duration {sum(durations):.0f} s in all, {min(durations):.1f}-{max(durations):.1f} s each",
        f"distinct pictures: {len({c['picture'] for c in clips.values()})}, sounds: "
        f"{len({c['sound'] for c in clips.values()})}, spoken phrases: {len({c['speech'] for c in clips.values()})}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(PROJECT_ROOT / "datasets" / "demo"))
    parser.add_argument("--output_dir", default=str(PROJECT_ROOT / "output" / "demo"))
    parser.add_argument("--clips", type=int, default=320)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    manifest = build_demo_corpus(args.data_dir, num_clips=args.clips)
    print(f"demo corpus in {args.data_dir}")
    for line in corpus_summary(manifest):
        print("  " + line)

    dist_info = distributed.init_distributed()
    rows = []
    try:
        for name in DEMO_CONFIGS:
            config_path = PROJECT_ROOT / "config" / "vast" / "demo" / f"{name}.json"
            output_dir = Path(args.output_dir) / name
            config = load_config(config_path, {"mode": ["inspect"], "output_dir": [str(output_dir)]})
            for entry in config.train + config.val:
                for key in ("txt", "vision", "audio", "annfile"):
                    value = getattr(entry, key)
                    if value.startswith("datasets/demo/"):
                        setattr(entry, key, str(Path(args.data_dir) / value[len("datasets/demo/"):]))
            setup_logging(output_dir, dist_info.is_main)
            for row in execute(config, dist_info):
                rows.append((name, row))
    except VastError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    finally:
        distributed.shutdown()

    print("\none batch per dataset and task (what the model receives):")
    print(f"  {'config':<16} {'split':<6} {'task':<28} {'items':>5}  fields")
    for name, row in rows:
        fields = ", ".join(f"{k} {v}" for k, v in row["fields"].items())
        print(f"  {name:<16} {row['split']:<6} {row['task']:<28} {row['items']:>5}  {fields}")
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
