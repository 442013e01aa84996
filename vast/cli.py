"""The `run.py` entry point: config -> process group -> logging -> data checks -> the requested mode.

User mistakes (config, paths, annotations, media) end the run with one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from vast.config import Config, check_data_paths, load_from_command_line
from vast import distributed
from vast.engine.logging import setup_logging
from vast.errors import DataError, VastError

logger = logging.getLogger("vast")

USER_ERROR_EXIT = 2
RANK_EXIT_DELAY_S = 2.0  # a bad command line under torchrun: see main()


def describe_batch(batch) -> dict[str, str]:
    """Field -> shape or length, for the fields a batch actually carries."""
    described = {}
    for name in ("vision", "audio"):
        value = getattr(batch, name)
        if value is not None:
            described[name] = "x".join(str(d) for d in value.shape)
    for group, texts in batch.texts.items():
        described[f"captions {group}"] = f"{len(texts)} texts" + (" (omni)" if texts.omni else "")
    for name in ("subtitles", "questions", "answers"):
        value = getattr(batch, name)
        if value is not None:
            described[name] = f"{len(value)} texts"
    return described


def inspect_data(config: Config, dist_info) -> list[dict]:
    """Build every dataset, decode one batch of each, and report what the model would receive."""
    from vast.data.loader import build_loader

    report = []
    for entry in config.train + config.val:
        loader = build_loader(entry, config, dist_info, failures="collect")
        started = time.perf_counter()
        batch = next(iter(loader), None)
        seconds = time.perf_counter() - started
        if batch is None:
            raise DataError(f"{entry.where}: no clip could be decoded; first problem: {loader.collected[0]}"
                            if loader.collected else f"{entry.where}: the dataset is empty")
        if batch.skipped:
            logger.warning("%s: %d item(s) of the first batch failed to decode, e.g. %s",
                           entry.where, len(batch.skipped), batch.skipped[0])
        row = {"dataset": entry.name, "split": entry.split, "task": entry.task.text,
               "items": loader.num_samples, "batch": len(batch), "fields": describe_batch(batch),
               "seconds": round(seconds, 2)}
        logger.info("%s %s task=%s items=%s first batch (%d, %.2fs): %s", entry.split, entry.name,
                    entry.task.text, loader.num_samples, len(batch), seconds,
                    ", ".join(f"{k} {v}" for k, v in row["fields"].items()))
        report.append(row)
    return report


def run(config: Config, dist_info) -> object:
    mode = config.run_cfg.mode
    if mode == "inspect":
        return inspect_data(config, dist_info)
    if mode == "check_data":
        from vast.data.check import check_data

        return check_data(config, dist_info)
    from vast.engine.trainer import run_training

    return run_training(config, dist_info)


def execute(config: Config, dist_info) -> object:
    """Write hps.json, check every data path, then run the config's mode; returns the mode's result."""
    if dist_info.is_main:
        hps = config.write_hps(config.run_cfg.output_dir)
        logger.info("config %s -> %s", config.config_path, hps)
    logger.info("world size %d (backend %s), device %s", dist_info.world_size,
                dist_info.backend or "none", dist_info.device)
    check_data_paths(config)
    result = run(config, dist_info)
    distributed.barrier()
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rank = int(os.environ.get("RANK", "0") or 0)
    try:
        config = load_from_command_line(argv)
    except VastError as error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr)
        else:
            # every rank finds the same mistake; the first to exit makes torchrun stop the others, so
            # the other ranks leave rank 0 the moment it needs to print the one line
            time.sleep(RANK_EXIT_DELAY_S)
        return USER_ERROR_EXIT

    dist_info = distributed.init_distributed()
    output_dir = Path(config.run_cfg.output_dir)
    setup_logging(output_dir, dist_info.is_main)
    try:
        execute(config, dist_info)
    except VastError as error:
        prefix = f"error (rank {dist_info.rank}): " if dist_info.world_size > 1 else "error: "
        print(prefix + str(error), file=sys.stderr)
        logging.getLogger("vast").error("%s", error)
        return USER_ERROR_EXIT
    finally:
        distributed.shutdown()
    return 0
