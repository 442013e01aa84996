"""Caption evaluation: generate a caption per clip and score it with pycocoevalcap (x100).

References come from the entry's COCO-style `annfile` when it has one, else from the annotation
file's own captions. Captioner mode (labeling a `meta.json` of ids, nothing to score) samples
several captions per clip and writes them as it goes: each rank appends one JSON line
`{id: [captions]}` per clip to its own chunk, flushed after every batch, so a killed run keeps what
it wrote and no rank holds more than a batch of captions; at the end rank 0 merges the chunks into
one `{id: [captions]}` file, the original captioner's layout.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from contextlib import ExitStack
from pathlib import Path

import torch

from vast.config import read_json, resolve_path
from vast.distributed import all_gather_objects, barrier, rank_and_world
from vast.errors import DataError
from vast.models.generation import caption_generation_config
from vast.tasks import TaskType

logger = logging.getLogger(__name__)

SPICE_LIB = "stanford-corenlp-3.6.0"


def load_coco_references(path: str | Path) -> dict[str, list[str]]:
    """`{"annotations": [{"video_id" | "image_id" | "id", "caption"}]}` -> clip id -> its captions."""
    resolved = resolve_path(path)
    data = read_json(resolved, "caption reference file (annfile)")
    rows = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DataError(f"{resolved}: a reference file is COCO style, {{\"annotations\": [{{\"video_id\", \"caption\"}}]}}")
    references: dict[str, list[str]] = {}
    for i, row in enumerate(rows):
        key = next((k for k in ("video_id", "image_id", "clip_id") if isinstance(row, dict) and k in row), None)
        if key is None or not isinstance(row.get("caption"), (str, list)):
            raise DataError(f"{resolved} annotation {i}: needs 'video_id' (or 'image_id') and 'caption'")
        captions = [row["caption"]] if isinstance(row["caption"], str) else row["caption"]
        references.setdefault(str(row[key]), []).extend(captions)
    return references


def coco_caption_scores(references: dict[str, list[str]], predictions: dict[str, str],
                        where: str = "references") -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when its CoreNLP models are installed), x100."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    missing = [clip for clip in predictions if not references.get(clip)]
    if missing:
        raise DataError(f"{where}: no reference caption for {len(missing)} clip(s), e.g. '{missing[0]}'; "
                        "every evaluated clip needs at least one reference")
    tokenizer = PTBTokenizer()
    refs = tokenizer.tokenize({clip: [{"caption": c} for c in references[clip]] for clip in predictions})
    preds = tokenizer.tokenize({clip: [{"caption": predictions[clip]}] for clip in predictions})
    scores: dict[str, float] = {}
    bleu, _ = Bleu(4).compute_score(refs, preds, verbose=0)
    scores.update({f"bleu{n + 1}": 100 * value for n, value in enumerate(bleu)})
    scores["meteor"] = 100 * Meteor().compute_score(refs, preds)[0]
    scores["rouge_l"] = 100 * Rouge().compute_score(refs, preds)[0]
    scores["cider"] = 100 * Cider().compute_score(refs, preds)[0]
    if _spice_available():
        from pycocoevalcap.spice.spice import Spice

        scores["spice"] = 100 * Spice().compute_score(refs, preds)[0]
    return {name: round(float(value), 2) for name, value in scores.items()}


def _spice_available() -> bool:
    try:
        import pycocoevalcap.spice as spice
    except ImportError:
        return False
    return (Path(spice.__file__).parent / "lib" / f"{SPICE_LIB}.jar").exists()


@torch.no_grad()
def evaluate_captioning(model, loader, entry, model_cfg, predictions: dict, *, log_dir: Path,
                        step: int) -> dict[str, dict]:
    """Caption every clip for each caption group; metrics per group (empty without references).
    `predictions[group]` receives {clip id: caption}. Without an `annfile`, the references are the
    captions the batches carry for the group. Captioner mode writes its captions under `log_dir`
    instead (see `captioner_paths`) and leaves `predictions` empty."""
    groups = entry.task.groups(TaskType.CAPTION)
    config = caption_generation_config(model_cfg)
    generator = torch.Generator(device=model.device).manual_seed(0)
    if config.strategy == "sample":  # captioner mode: several captions per clip, nothing to score
        write_caption_chunks(model, loader, groups, config, generator,
                             {g.name: captioner_paths(log_dir, entry.name, g.name, step) for g in groups})
        return {g.name: {} for g in groups}
    local: dict[str, dict] = {g.name: {} for g in groups}
    references: dict[str, dict] = {g.name: {} for g in groups}
    for batch in loader:
        batch = batch.to(model.device)
        media = model.encode_batch(batch, groups)
        for group in groups:
            texts = model.generate_text(media, group, config, generator=generator)
            for clip, captions in zip(batch.ids, texts):
                local[group.name][clip] = captions[0]
            if own := batch.texts_for(group):
                for clip, text in zip(own.owners, own.texts):
                    references[group.name].setdefault(clip, []).append(text)
    annfile_references = load_coco_references(entry.annfile) if entry.annfile else None
    results = {}
    for group in groups:
        merged = {clip: text for part in all_gather_objects(local[group.name]) for clip, text in part.items()}
        predictions[group.name] = merged
        results[group.name] = {}
        if annfile_references is not None:
            results[group.name] = coco_caption_scores(annfile_references, merged, entry.annfile)
        elif group_refs := {clip: texts for part in all_gather_objects(references[group.name])
                            for clip, texts in part.items()}:
            results[group.name] = coco_caption_scores(group_refs, merged, entry.txt or entry.name)
    return results


# --- captioner mode ------------------------------------------------------------------------------

def captioner_paths(log_dir: Path, dataset: str, group: str, step: int) -> tuple[Path, Path]:
    """Where captioner mode writes one group's captions: the folder of per-rank chunks
    (`rank<R>.jsonl`) and the merged `{id: [captions]}` file beside it."""
    stem = f"captions_{dataset}_{group}_step{step}"
    return Path(log_dir) / stem, Path(log_dir) / f"{stem}.json"


def write_caption_chunks(model, loader, groups, config, generator, paths: dict[str, tuple[Path, Path]]) -> None:
    """Every rank appends its clips' sampled captions to its chunk of each group, then rank 0 merges.
    A rerun into the same folder truncates the chunks rather than resuming them: the rerun samples
    the same captions again (fixed seed), and a chunk never mixes two runs' lines."""
    rank, world_size = rank_and_world()
    with ExitStack() as stack:
        chunks = {}
        for name, (chunk_dir, _) in paths.items():
            chunk_dir.mkdir(parents=True, exist_ok=True)
            extra = world_size
            while rank == 0 and (stale := chunk_dir / f"rank{extra}.jsonl").exists():
                stale.unlink()  # a former run with more processes: not this run's captions
                extra += 1
            chunks[name] = stack.enter_context(open(chunk_dir / f"rank{rank}.jsonl", "w", encoding="utf-8"))
        for batch in loader:
            batch = batch.to(model.device)
            media = model.encode_batch(batch, groups)
            for group in groups:
                texts = model.generate_text(media, group, config, generator=generator)
                chunk = chunks[group.name]
                for clip, captions in zip(batch.ids, texts):
                    chunk.write(json.dumps({clip: captions}, ensure_ascii=False) + "\n")
                chunk.flush()
    barrier()  # every rank's chunk is complete before rank 0 reads them
    if rank == 0:
        for chunk_dir, merged in paths.values():
            count = merge_caption_chunks(chunk_dir, world_size, merged)
            logger.info("captions of %d clips written to %s (per-rank chunks in %s)", count, merged, chunk_dir)


def merge_caption_chunks(chunk_dir: Path, world_size: int, merged: Path) -> int:
    """Interleave the ranks' chunks line by line into one `{id: [captions]}` JSON; returns the clip count.

    Evaluation splits an annotation file by stride (rank r takes items r, r+W, r+2W, ...; see
    vast.data.loader.ShardedSampler), so taking one line from each chunk in turn restores the file's
    order (the meta.json order); shard streams have no such order to keep. A clip seen twice (a
    sampler that pads the last round by repeating clips) keeps its first captions. The merge
    streams: only the ids seen so far stay in memory, never the captions."""
    seen: set[str] = set()
    partial = merged.with_name(merged.name + ".partial")
    with ExitStack() as stack:
        chunks = [stack.enter_context(open(chunk_dir / f"rank{r}.jsonl", encoding="utf-8")) for r in range(world_size)]
        out = stack.enter_context(open(partial, "w", encoding="utf-8"))
        out.write("{")
        for line in itertools.chain.from_iterable(itertools.zip_longest(*chunks)):
            if not line:
                continue
            [(clip, captions)] = json.loads(line).items()
            if clip in seen:
                continue
            out.write(("," if seen else "") + f"\n {json.dumps(clip, ensure_ascii=False)}: "
                      + json.dumps(captions, ensure_ascii=False))
            seen.add(clip)
        out.write("\n}\n")
    os.replace(partial, merged)  # a reader never sees half a merged file
    return len(seen)
