"""Open-ended QA evaluation: generate an answer per question, score exact match (x100).

`accuracy` compares answers after light normalisation (lower case, punctuation and the articles
a/an/the removed, spaces collapsed); `raw_accuracy` compares the stripped strings as they are.
"""

from __future__ import annotations

import re
import string

import torch

from vast.distributed import all_gather_objects
from vast.models.generation import GenerationConfig
from vast.tasks import TaskType

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def qa_generation_config(model_cfg) -> GenerationConfig:
    beam = int(model_cfg.get("beam_size_qa", 1))
    return GenerationConfig(strategy="beam" if beam > 1 else "greedy", beam_size=beam,
                            max_len=int(model_cfg.get("max_answer_len", 10)) + 1,
                            length_penalty=float(model_cfg.get("length_penalty", 0.6)),
                            use_cache=bool(model_cfg.get("generation_cache", True)))


def qa_accuracy(records: list[dict]) -> dict[str, float]:
    """records: {"answer", "prediction"} each; accuracy and raw_accuracy in percent."""
    if not records:
        return {"accuracy": 0.0, "raw_accuracy": 0.0, "questions": 0}
    normalised = sum(normalize_answer(r["prediction"]) == normalize_answer(r["answer"]) for r in records)
    raw = sum(r["prediction"].strip() == r["answer"].strip() for r in records)
    n = len(records)
    return {"accuracy": round(100 * normalised / n, 2), "raw_accuracy": round(100 * raw / n, 2), "questions": n}


@torch.no_grad()
def evaluate_qa(model, loader, entry, model_cfg, predictions: dict) -> dict[str, dict]:
    """Answer every question of every clip for each QA group; `predictions[group]` receives
    [{"question_id", "video_id", "question", "answer", "prediction"}]."""
    groups = entry.task.groups(TaskType.QA)
    config = qa_generation_config(model_cfg)
    local: dict[str, list] = {g.name: [] for g in groups}
    for batch in loader:
        batch = batch.to(model.device)
        media = model.encode_batch(batch, groups)
        video_index = torch.tensor(batch.question_video_index, dtype=torch.long)
        for group in groups:
            answers = model.generate_text(media, group, config, questions=batch.questions, video_index=video_index)
            for k, (qid, question, answer) in enumerate(zip(batch.question_ids, batch.questions, batch.answers)):
                local[group.name].append({"question_id": qid, "video_id": batch.ids[batch.question_video_index[k]],
                                          "question": question, "answer": answer, "prediction": answers[k][0]})
    results = {}
    for group in groups:
        merged = [record for part in all_gather_objects(local[group.name]) for record in part]
        merged.sort(key=lambda r: r["question_id"])
        predictions[group.name] = merged
        results[group.name] = qa_accuracy(merged)
    return results
