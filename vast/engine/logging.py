"""Logging for runs: the human log `output_dir/log/log.txt` and the terminal, on rank 0 only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(output_dir: Path | None, is_main: bool) -> logging.Logger:
    """Rank 0 logs INFO to the terminal and to log.txt; other ranks log only errors to stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    terminal = logging.StreamHandler(sys.stdout if is_main else sys.stderr)
    terminal.setFormatter(formatter)
    root.addHandler(terminal)
    root.setLevel(logging.INFO if is_main else logging.ERROR)
    if is_main and output_dir is not None:
        log_dir = Path(output_dir) / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_dir / "log.txt", encoding="utf-8")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    for noisy in ("PIL", "urllib3", "filelock", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("vast")
