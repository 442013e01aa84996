"""What a recipe needs before it starts: its data, the run it fine-tunes, the weight files; a few lines
naming whatever is missing and where to get it.

    python -m vast.preflight --config FILE [--config FILE ...] [--key value ...]   (run.py's options)

Several configs: one line each. Exit status 0 when everything is there (silent), 2 otherwise. The recipe launchers in scripts/vast/
call it once, in one process, before torchrun starts a process per GPU; so a missing dataset is a
short message instead of one traceback per process.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from vast.config import Config, load_config, parse_command_line, resolve_path
from vast.config.load import path_exists, required_paths
from vast.errors import VastError
from vast.models.text import TEXT_WEIGHT_FOLDERS
from vast.models.towers import tokenizer_source, tower_configs

DATASETS_README = "datasets/README.md"
WEIGHTS_README = "pretrained_weights/README.md"


@dataclass(frozen=True)
class Missing:
    kind: str  # "data" | "pretrained run" | "weights"
    path: str  # as the config gives it, with what it is in brackets where that helps
    source: str  # where to read how to get it


def _dataset_of(path: str) -> str:
    """The benchmark folder of `datasets/{annotations,srcdata}/<name>/...` (its README section)."""
    parts = Path(path).parts
    for marker in ("annotations", "srcdata"):
        if marker in parts and parts.index(marker) + 1 < len(parts) - 1:
            return parts[parts.index(marker) + 1]
    return ""


def missing_data(config: Config) -> list[Missing]:
    found, seen = [], set()
    for value, where, kind in required_paths(config):
        if where.startswith("run_cfg") or value in seen or path_exists(value, kind):
            continue
        seen.add(value)
        dataset = _dataset_of(value)
        found.append(Missing("data", value, f"{DATASETS_README} ({dataset})" if dataset else DATASETS_README))
    return found


def missing_weights(config: Config, pretrain_dir: str) -> list[Missing]:
    """The checkpoint the run starts from (a file, a pretrained run, or the towers' release files)
    and the tokenizer's folder."""
    run_cfg, model_cfg = config.run_cfg, config.model_cfg
    found = []
    if run_cfg.checkpoint:
        if not resolve_path(run_cfg.checkpoint).is_file():
            found.append(Missing("weights", run_cfg.checkpoint, WEIGHTS_README))
    elif pretrain_dir:
        folder = resolve_path(pretrain_dir)
        if not (any((folder / "ckpt").glob("model_step_*.pt")) and (folder / "log" / "hps.json").is_file()):
            found.append(Missing("pretrained run", f"{pretrain_dir} (ckpt/model_step_<N>.pt + log/hps.json)",
                                 WEIGHTS_README))
    else:
        for name, tower in tower_configs(model_cfg).items():
            if tower.weights and tower.weights not in TEXT_WEIGHT_FOLDERS and not resolve_path(tower.weights).exists():
                found.append(Missing("weights", f"{tower.weights} ({name} tower)", WEIGHTS_README))
    tokenizer = tokenizer_source(model_cfg)
    if tokenizer not in TEXT_WEIGHT_FOLDERS and not Path(tokenizer).is_dir() \
            and all(not m.path.startswith(f"{tokenizer} ") for m in found):
        found.append(Missing("weights", f"{tokenizer} (tokenizer)", WEIGHTS_README))
    return found


def report(name: str, missing: list[Missing]) -> str:
    """A few lines: what is missing, grouped by kind, and where each kind comes from."""
    lines = [f"{name}: cannot start, {len(missing)} file(s) or folder(s) missing (paths from the project root):"]
    for kind in ("data", "pretrained run", "weights"):
        items = [m for m in missing if m.kind == kind]
        if not items:
            continue
        shown = ", ".join(m.path for m in items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
        lines.append(f"  {kind}: {shown}")
        sources = list(dict.fromkeys(m.source for m in items))
        if kind == "data" and len(sources) > 1:  # one README, several sections
            sections = [src.partition("(")[2].rstrip(")") for src in sources]
            sources = [f"{DATASETS_README} ({', '.join(sections)})"]
        lines.append(f"    how to get them: {'; '.join(sources)}")
    return "\n".join(lines)


def brief(name: str, missing: list[Missing]) -> str:
    """One line, for a launcher that checks many recipes at once."""
    parts = []
    for kind in ("data", "pretrained run", "weights"):
        items = [m for m in missing if m.kind == kind]
        if items:
            parts.append(f"{kind} ({len(items)})")
    return f"{name}: missing " + ", ".join(parts)


def check(config_path: str, overrides: dict[str, list[str]]) -> list[Missing]:
    overrides = dict(overrides)
    # checked here, so a missing run is reported with the rest instead of failing the inheritance
    pretrain_dir = " ".join(overrides.pop("pretrain_dir", []))
    config = load_config(config_path, overrides)
    return missing_data(config) + missing_weights(config, pretrain_dir or config.run_cfg.pretrain_dir)


def split_configs(argv: list[str]) -> tuple[list[str], list[str]]:
    """Every `--config FILE` (a launcher may check several recipes at once) and the other options."""
    configs, rest, tokens = [], [], iter(argv)
    for token in tokens:
        if token == "--config":
            configs.append(next(tokens, ""))
        elif token.startswith("--config="):
            configs.append(token.partition("=")[2])
        else:
            rest.append(token)
    return configs, rest


def main(argv: list[str]) -> int:
    configs, rest = split_configs(argv)
    short = len(configs) > 1
    failed = False
    for config_path in configs or [""]:
        try:
            command_line = parse_command_line(["--config", config_path, *rest] if config_path else rest)
            missing = check(command_line.config, command_line.overrides)
        except VastError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if missing:
            name = Path(config_path).stem
            print(brief(name, missing) if short else report(name, missing), file=sys.stderr)
            failed = True
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
