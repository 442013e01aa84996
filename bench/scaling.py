"""Training throughput of `run.py` on the demo retrieval task: 1 process against 2, and gradient
accumulation with contrastive negatives over the whole step against each micro-batch's own.

Each run is `run.py` itself on a copy of config/vast/demo/retrieval-demo.json that points at a demo
corpus (built in a temporary folder unless `--corpus` names one) and has no val entries, trained
for `--steps` steps with a log line every step and no evaluation. Samples per second come from the
run's own records, so start-up (imports, model build, loader workers) is left out: the per-step
`samples_per_s` of `output_dir/log/train.jsonl` when the trainer writes it (harmonic mean of the
steps after the first), else the elapsed times of the log lines `step K/N ... (12.3s)` in
`output_dir/log/log.txt`, (t_last - t_first) / (K_last - K_first).

Every run has the same global batch per optimizer step (`--batch_size`), split over the processes
and micro-steps:
(a) 1 process with OMP_NUM_THREADS=2 against torchrun `--nproc_per_node 2` with OMP_NUM_THREADS=1
each (the same total threads);
(b) 1 process, `--gradient_accumulation_steps 2`, `--contrastive_negatives global` (negatives from
both micro-batches) against `micro_batch` (each micro-batch its own).

    python bench/scaling.py
    python bench/scaling.py --corpus datasets/demo --steps 20 --batch_size 32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vast.config import PROJECT_ROOT
from vast.data.demo_corpus import build_demo_corpus

DEMO_CONFIG = PROJECT_ROOT / "config/vast/demo/retrieval-demo.json"
STEP_LINE = re.compile(r"step (\d+)/(\d+) .*\((\d+(?:\.\d+)?)s\)\s*$")


@dataclass
class Run:
    name: str
    processes: int
    threads: int  # OMP_NUM_THREADS of each process
    options: dict  # run.py options beyond the common ones


RUNS = (
    Run("1 process", 1, 2, {}),
    Run("2 processes", 2, 1, {}),
    Run("accumulation 2, negatives global", 1, 2,
        {"gradient_accumulation_steps": 2, "contrastive_negatives": "global"}),
    Run("accumulation 2, negatives micro_batch", 1, 2,
        {"gradient_accumulation_steps": 2, "contrastive_negatives": "micro_batch"}),
)


def write_config(folder: Path, corpus: Path) -> Path:
    """The demo retrieval config, its data paths moved to `corpus`, without val entries."""
    config = json.loads(DEMO_CONFIG.read_text())
    for block in ("run_cfg", "model_cfg"):
        config[block]["default"] = str(PROJECT_ROOT / config[block]["default"])
    for entry in config["data_cfg"]["train"]:
        for key in ("txt", "vision", "audio"):
            entry[key] = str(corpus / entry[key].removeprefix("datasets/demo/"))
    config["data_cfg"]["val"] = []
    path = folder / "retrieval-scaling.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def command_line(run: Run, config: Path, output_dir: Path, steps: int, batch_size: int) -> list[str]:
    launcher = ["python"] if run.processes == 1 else ["torchrun", "--standalone", "--nproc_per_node", str(run.processes)]
    options = {"config": config, "output_dir": output_dir, "train_steps": steps, "train_batch_size": batch_size,
               "log_steps": 1, "valid_freq": 1, "first_eval": "false", **run.options}
    return [*launcher, "run.py", *(part for key, value in options.items() for part in (f"--{key}", str(value)))]


def executable(argv: list[str]) -> list[str]:
    """`python` / `torchrun` of this interpreter's environment."""
    binary = Path(sys.executable) if argv[0] == "python" else Path(sys.executable).parent / argv[0]
    return [str(binary), *argv[1:]]


def samples_per_second(log_dir: Path, samples_per_step: int) -> tuple[float, str]:
    """Training throughput from a finished run's records, and which record it came from."""
    records = log_dir / "train.jsonl"
    if records.is_file():
        rates = [json.loads(line).get("samples_per_s") for line in records.read_text().splitlines() if line.strip()]
        rates = [r for r in rates[1:] if r]  # the first step pays for warm-up
        if rates:
            return statistics.harmonic_mean(rates), "train.jsonl"
    steps = []
    for line in (log_dir / "log.txt").read_text().splitlines():
        match = STEP_LINE.search(line)
        if match:
            steps.append((int(match.group(1)), float(match.group(3))))
    if len(steps) < 2:
        raise RuntimeError(f"{log_dir / 'log.txt'}: fewer than two 'step K/N ... (Ts)' lines")
    (first_step, first_time), (last_step, last_time) = steps[0], steps[-1]
    seconds_per_step = (last_time - first_time) / (last_step - first_step)
    return samples_per_step / seconds_per_step, "log.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="", help="an existing demo corpus (default: build 48 clips in a temp folder)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=16, help="global batch of an optimizer step")
    parser.add_argument("--runs", default="", help="comma-separated run numbers (1-4) to do; default all")
    args = parser.parse_args()
    chosen = [RUNS[int(i) - 1] for i in args.runs.split(",")] if args.runs else list(RUNS)

    results, commands, failures = {}, [], []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vast_scaling_") as temp:
        folder = Path(temp)
        corpus = Path(args.corpus).resolve() if args.corpus else folder / "corpus"
        if not args.corpus:
            build_demo_corpus(corpus, num_clips=48, seed=0, workers=2)
        config = write_config(folder, corpus)
        for number, run in enumerate(chosen, 1):
            output_dir = folder / f"run{number}"
            argv = command_line(run, config, output_dir, args.steps, args.batch_size)
            commands.append(f"OMP_NUM_THREADS={run.threads} {shlex.join(argv)}")
            print(f"[{run.name}] {commands[-1]}", flush=True)
            environment = {**os.environ, "OMP_NUM_THREADS": str(run.threads)}
            done = subprocess.run(executable(argv), cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True)
            if done.returncode != 0:
                last_line = (done.stderr.strip().splitlines() or [""])[-1]
                failures.append(f"{run.name}: exit {done.returncode}: {last_line}")
                print(done.stderr[-2000:], file=sys.stderr)
                continue
            # `batch_size` is the global batch of an optimizer step, whatever the processes and micro-steps
            results[run.name] = samples_per_second(output_dir / "log", args.batch_size)

    print(f"command: python bench/scaling.py {shlex.join(sys.argv[1:])}".rstrip())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average before the runs {load_before:.1f}, "
          f"after {os.getloadavg()[0]:.1f}; "
          f"demo retrieval task (ret%tvas), global batch {args.batch_size}, {args.steps} steps")
    print(f"{'run':<40} {'processes':>9} {'threads':>7} {'samples/s':>9}  from")
    for run in chosen:
        if run.name in results:
            rate, source = results[run.name]
            print(f"{run.name:<40} {run.processes:>9} {run.processes * run.threads:>7} {rate:>9.2f}  {source}")
    ratios = (("2 processes / 1 process", "2 processes", "1 process"),
              ("negatives global / micro_batch", "accumulation 2, negatives global",
               "accumulation 2, negatives micro_batch"))
    for label, top, bottom in ratios:
        if top in results and bottom in results:
            print(f"{label}: {results[top][0] / results[bottom][0]:.2f}x")
    print("commands (OMP_NUM_THREADS = threads per process):")
    for command in commands:
        print(f"  {command}")
    for failure in failures:
        print(f"failed: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
