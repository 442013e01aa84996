"""Open-ended QA evaluation: generate an answer per question and score it (x100).

A question with one reference answer scores exact match after light normalisation (lower case,
punctuation and the articles a/an/the removed, spaces collapsed). A question with several people's
answers (VQAv2's ten) scores the VQA soft accuracy: for each leave-one-person-out subset of the
answers, min(1, matches / 3), averaged, with the VQA evaluation's answer normalisation. `accuracy`
is the mean over questions; `raw_accuracy` compares the stripped strings with the first answer.
"""

from __future__ import annotations

import re
import string

import torch

from vast.distributed import all_gather_objects
from vast.models.generation import answer_generation_config
from vast.tasks import TaskType

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


# The VQA evaluation's normalisation rules (facts of the benchmark, written here from its description).
_VQA_PUNCTUATION = ";/[]\"{}()=+\\_-><@`,?!"
_VQA_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_VQA_ARTICLES = {"a", "an", "the"}
_VQA_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "shant": "shan't", "shed": "she'd", "shes": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "thats": "that's", "thered": "there'd", "theres": "there's",
    "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't",
    "wed": "we'd", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_LONE_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit (the official rule)


def vqa_normalize(text: str) -> str:
    """VQA answer normalisation: punctuation dropped (or a space where it separates words), periods
    kept only as decimal points, number words as digits, articles dropped, contractions restored."""
    text = text.replace("\n", " ").replace("\t", " ").strip().lower()
    for mark in _VQA_PUNCTUATION:
        if mark + " " in text or " " + mark in text or _DIGIT_COMMA_DIGIT.search(text):
            text = text.replace(mark, "")
        else:
            text = text.replace(mark, " ")
    text = _LONE_PERIOD.sub("", text)
    words = [_VQA_NUMBERS.get(word, word) for word in text.split() if word not in _VQA_ARTICLES]
    return " ".join(_VQA_CONTRACTIONS.get(word, word) for word in words)


def vqa_soft_accuracy(prediction: str, references: list[str]) -> float:
    """The VQAv2 accuracy of one answer against the people's answers, in [0, 1]: the mean over the
    leave-one-out subsets of min(1, matching answers / 3). Normalised as the official evaluation
    does: always when the people disagree, otherwise only whitespace is trimmed."""
    prediction = prediction.replace("\n", " ").replace("\t", " ").strip()
    references = [r.replace("\n", " ").replace("\t", " ").strip() for r in references]
    if len(set(references)) > 1:
        prediction = vqa_normalize(prediction)
        references = [vqa_normalize(r) for r in references]
    scores = []
    for left_out in range(len(references)):
        matches = sum(r == prediction for k, r in enumerate(references) if k != left_out)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def question_score(record: dict) -> float:
    references = record.get("answers") or [record["answer"]]
    if len(references) > 1:
        return vqa_soft_accuracy(record["prediction"], references)
    return float(normalize_answer(record["prediction"]) == normalize_answer(references[0]))


def qa_accuracy(records: list[dict]) -> dict[str, float]:
    """records: {"answer", "answers"?, "prediction"} each; accuracy and raw_accuracy in percent."""
    if not records:
        return {"accuracy": 0.0, "raw_accuracy": 0.0, "questions": 0}
    score = sum(question_score(r) for r in records)
    raw = sum(r["prediction"].strip() == r["answer"].strip() for r in records)
    n = len(records)
    return {"accuracy": round(100 * score / n, 2), "raw_accuracy": round(100 * raw / n, 2), "questions": n}


def submission(records: list[dict]) -> list[dict]:
    """A VQAv2 test-dev / test-std submission: `[{"question_id": int, "answer": str}]`."""
    return [{"question_id": int(r["question_id"]) if str(r["question_id"]).isdigit() else r["question_id"],
             "answer": r["prediction"]} for r in records]


@torch.no_grad()
def evaluate_qa(model, loader, entry, model_cfg, predictions: dict) -> dict[str, dict]:
    """Answer every question of every clip for each QA group; `predictions[group]` receives
    [{"question_id", "video_id", "question", "answer", "prediction"}]."""
    groups = entry.task.groups(TaskType.QA)
    config = answer_generation_config(model_cfg)
    local: dict[str, list] = {g.name: [] for g in groups}
    for batch in loader:
        batch = batch.to(model.device)
        media = model.encode_batch(batch, groups)
        video_index = torch.tensor(batch.question_video_index, dtype=torch.long)
        for group in groups:
            answers = model.generate_text(media, group, config, questions=batch.questions, video_index=video_index)
            for k, (qid, question, answer) in enumerate(zip(batch.question_ids, batch.questions, batch.answers)):
                record = {"question_id": qid, "video_id": batch.ids[batch.question_video_index[k]],
                          "question": question, "answer": answer, "prediction": answers[k][0]}
                if len(batch.answer_refs[k]) > 1:
                    record["answers"] = batch.answer_refs[k]
                local[group.name].append(record)
    results = {}
    for group in groups:
        merged = [record for part in all_gather_objects(local[group.name]) for record in part]
        merged.sort(key=lambda r: (0, int(r["question_id"]), "") if str(r["question_id"]).isdigit()
                    else (1, 0, str(r["question_id"])))
        predictions[group.name] = merged
        results[group.name] = qa_accuracy(merged)
    return results
