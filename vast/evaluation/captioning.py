"""Caption evaluation: generate a caption per clip and score it with pycocoevalcap (x100).

References come from the entry's COCO-style `annfile` when it has one, else from the annotation
file's own captions. Without any reference (a captioner `meta.json` with only ids), captions are
generated and saved but not scored.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vast.config import read_json, resolve_path
from vast.distributed import all_gather_objects
from vast.errors import DataError
from vast.models.generation import GenerationConfig
from vast.tasks import TaskType

logger = logging.getLogger(__name__)

SPICE_LIB = "stanford-corenlp-3.6.0"


def caption_generation_config(model_cfg) -> GenerationConfig:
    """Beam search with `beam_size` (greedy when 1); captioner mode samples `generate_nums` captions."""
    common = {"max_len": int(model_cfg.get("max_caption_len", 40)),
              "use_cache": bool(model_cfg.get("generation_cache", True))}
    if model_cfg.get("captioner_mode"):
        return GenerationConfig(strategy="sample", num_samples=int(model_cfg.get("generate_nums", 1)),
                                top_k=int(model_cfg.get("sample_top_k", 5)),
                                temperature=float(model_cfg.get("sample_temperature", 1.0)), **common)
    beam = int(model_cfg.get("beam_size", 1))
    return GenerationConfig(strategy="beam" if beam > 1 else "greedy", beam_size=beam,
                            length_penalty=float(model_cfg.get("length_penalty", 0.6)), **common)


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
def evaluate_captioning(model, loader, entry, model_cfg, predictions: dict) -> dict[str, dict]:
    """Caption every clip for each caption group; metrics per group (empty without references).
    `predictions[group]` receives {clip id: caption} (a list of captions in captioner mode).
    Without an `annfile`, the references are the captions the batches carry for the group."""
    groups = entry.task.groups(TaskType.CAPTION)
    config = caption_generation_config(model_cfg)
    generator = torch.Generator(device=model.device).manual_seed(0)
    local: dict[str, dict] = {g.name: {} for g in groups}
    references: dict[str, dict] = {g.name: {} for g in groups}
    for batch in loader:
        batch = batch.to(model.device)
        media = model.encode_batch(batch, groups)
        for group in groups:
            texts = model.generate_text(media, group, config, generator=generator)
            for clip, captions in zip(batch.ids, texts):
                local[group.name][clip] = captions if config.strategy == "sample" else captions[0]
            if own := batch.texts_for(group):
                for clip, text in zip(own.owners, own.texts):
                    references[group.name].setdefault(clip, []).append(text)
    annfile_references = load_coco_references(entry.annfile) if entry.annfile and config.strategy != "sample" else None
    results = {}
    for group in groups:
        merged = {clip: text for part in all_gather_objects(local[group.name]) for clip, text in part.items()}
        predictions[group.name] = merged
        results[group.name] = {}
        if config.strategy == "sample":  # captioner mode: several captions per clip, nothing to score
            continue
        if annfile_references is not None:
            results[group.name] = coco_caption_scores(annfile_references, merged, entry.annfile)
        elif group_refs := {clip: texts for part in all_gather_objects(references[group.name])
                            for clip, texts in part.items()}:
            results[group.name] = coco_caption_scores(group_refs, merged, entry.txt or entry.name)
    return results
