"""`--mode check_data`: decode every item of every data entry as training or evaluation would, and
report every problem: a table (file, problem) in the log and `output_dir/log/check_data.json`.

Each entry is read once through the same loader as training or evaluation (the same datasets, media
decoding and text checks), with failures collected instead of skipped or raised; resampled shard
streams are read as one plain pass. Loader workers decode in parallel (the entry's `n_workers`, at
least 2); under torchrun each rank checks its share and rank 0 writes the report. The run ends with
exit status 0 only when nothing failed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from tqdm import tqdm

from vast.data.batch import Failure
from vast.data.items import failure_of
from vast.data.loader import build_loader
from vast.distributed import all_gather_objects
from vast.errors import DataError

logger = logging.getLogger("vast")

MIN_WORKERS = 2
TABLE_ROWS = 200  # the log shows this many problems; the JSON report has all of them


def _check_entry(entry, config, dist_info) -> tuple[int, list[Failure]]:
    """(items read, problems) of one data entry on this rank."""
    workers = max(entry.n_workers, min(MIN_WORKERS, os.cpu_count() or 1))
    entry = dataclasses.replace(entry, n_workers=workers, resampled=False)
    try:
        loader = build_loader(entry, config, dist_info, failures="collect")
    except DataError as error:  # e.g. an annotation row without the text the task needs
        return 0, [failure_of(error)]
    total = loader.num_samples
    share = None if total is None else -(-total // dist_info.world_size)
    with tqdm(total=share, desc=f"check {entry.name}", unit="clip", disable=not dist_info.is_main,
              leave=False) as progress:
        for _ in loader:
            progress.update(loader.items_read - progress.n)
    return loader.items_read, loader.collected


def _table(rows: list[dict]) -> list[str]:
    width = min(90, max([len("file")] + [len(r["file"]) for r in rows]))
    lines = [f"{'dataset':<16} {'file':<{width}}  problem"]
    for row in rows[:TABLE_ROWS]:
        lines.append(f"{row['dataset']:<16} {row['file']:<{width}}  {row['problem']}")
    if len(rows) > TABLE_ROWS:
        lines.append(f"... and {len(rows) - TABLE_ROWS} more (all in the JSON report)")
    return lines


def check_data(config, dist_info) -> dict:
    """Check every entry of `config`; returns the report (also written as JSON by rank 0)."""
    report = {"datasets": [], "problems": []}
    for entry in config.train + config.val:
        read, failures = _check_entry(entry, config, dist_info)
        parts = all_gather_objects((read, [(f.where, f.reason) for f in failures]))
        problems = sorted({where_reason for _, found in parts for where_reason in found})
        items = sum(count for count, _ in parts)
        report["datasets"].append({"dataset": entry.name, "split": entry.split, "type": entry.type,
                                   "items_read": items, "problems": len(problems)})
        report["problems"] += [{"dataset": entry.name, "split": entry.split, "file": where, "problem": reason}
                               for where, reason in problems]
        logger.info("checked %s (%s): %d item(s) read, %d problem(s)", entry.name, entry.split, items, len(problems))
    report["ok"] = not report["problems"]
    if dist_info.is_main:
        path = Path(config.run_cfg.output_dir) / "log" / "check_data.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        report["path"] = str(path)
        if report["problems"]:
            for line in _table(report["problems"]):
                logger.info("%s", line)
    if report["problems"]:
        raise DataError(f"check_data: {len(report['problems'])} problem(s) in "
                        f"{sum(1 for d in report['datasets'] if d['problems'])} dataset(s); the table is in the "
                        f"log, every problem in {Path(config.run_cfg.output_dir) / 'log' / 'check_data.json'}")
    logger.info("check_data: every item of %d dataset(s) is readable", len(report["datasets"]))
    return report
