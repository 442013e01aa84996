"""Captioning and QA: COCO metrics, answer normalisation, reference files, and training + evaluation
through run.py on the demo corpus (predictions written beside metrics.jsonl)."""

import json

import pytest

from vast.errors import DataError
from vast.evaluation.captioning import coco_caption_scores, load_coco_references
from vast.evaluation.qa import normalize_answer, qa_accuracy, vqa_normalize, vqa_soft_accuracy

from conftest import demo_entry
from test_cli import run
from test_training import read_metrics


def test_normalize_answer():
    assert normalize_answer("The Red.") == "red"
    assert normalize_answer("  an  apple!! ") == "apple"
    assert normalize_answer("left-to-right") == "lefttoright"
    assert normalize_answer("Théâtre") == "théâtre"


def test_vqa_soft_accuracy_equals_the_official_formula():
    """By hand: acc = mean over the 10 leave-one-out subsets of min(1, matches / 3)."""
    people = ["red"] * 4 + ["dark red"] * 3 + ["maroon"] * 2 + ["Red."]
    assert vqa_soft_accuracy("red", people) == 1.0  # 5 after normalisation: >= 3 in every subset
    assert vqa_soft_accuracy("dark red", people) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)  # 0.9
    assert vqa_soft_accuracy("maroon", people) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)  # 0.6
    assert vqa_soft_accuracy("blue", people) == 0.0
    assert vqa_soft_accuracy("two", ["2", "2"] + ["3"] * 8) == pytest.approx(0.6)  # number words as digits
    assert vqa_soft_accuracy("the dog", ["dog", "dog", "dog", "a dog", "dogs"]) == 1.0  # articles dropped
    assert vqa_soft_accuracy("two", ["2"] * 10) == 0.0  # people agree: the official compares as written
    assert vqa_normalize("Dont know, 1,000 ones!") == "don't know 1000 ones"
    assert vqa_normalize("3.5 m. high") == "3.5 m high"


def test_qa_accuracy_averages_soft_scores_over_questions():
    records = [{"answer": "red", "answers": ["red"] * 4 + ["dark red"] * 3 + ["maroon"] * 3, "prediction": "red"},
               {"answer": "yes", "prediction": "Yes"}]  # one reference: exact match after normalisation
    assert qa_accuracy(records)["accuracy"] == 100.0
    records[0]["prediction"] = "maroon"
    assert qa_accuracy(records)["accuracy"] == round(100 * (0.9 + 1.0) / 2, 2)


def test_qa_accuracy_normalised_and_raw():
    records = [{"answer": "red", "prediction": "Red"}, {"answer": "the door", "prediction": "door"},
               {"answer": "car", "prediction": "car"}, {"answer": "hum", "prediction": "hiss"}]
    assert qa_accuracy(records) == {"accuracy": 75.0, "raw_accuracy": 25.0, "questions": 4}


def test_coco_scores_rank_a_good_caption_above_a_bad_one():
    refs = {"v1": ["a red circle moves from left to right", "a red circle slides to the right"],
            "v2": ["a blue circle moves from top to bottom", "a blue circle travels down"]}
    good = coco_caption_scores(refs, {"v1": "a red circle moves from left to right",
                                      "v2": "a blue circle moves from top to bottom"})
    bad = coco_caption_scores(refs, {"v1": "someone says door", "v2": "someone says door"})
    assert set(good) >= {"bleu1", "bleu4", "meteor", "rouge_l", "cider"}
    assert good["cider"] > 100 and bad["cider"] < 20
    assert good["bleu4"] > bad["bleu4"] and good["meteor"] > bad["meteor"]


def test_non_ascii_captions_are_scored():
    refs = {"v1": ["un café crème au soleil", "le café brûlé"], "v2": ["naïve señor über straße"]}
    scores = coco_caption_scores(refs, {"v1": "un café crème", "v2": "señor über straße"})
    assert scores["cider"] > 0 and scores["bleu1"] > 0


def test_reference_file_with_caption_lists_and_missing_references(tmp_path):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps({"annotations": [{"video_id": "v1", "caption": ["one", "two"]},
                                                {"image_id": 7, "caption": "three"}]}))
    assert load_coco_references(path) == {"v1": ["one", "two"], "7": ["three"]}
    with pytest.raises(DataError, match="no reference caption.*'v2'"):
        coco_caption_scores(load_coco_references(path), {"v1": "one", "v2": "x"}, str(path))
    path.write_text(json.dumps([{"video_id": "v1"}]))
    with pytest.raises(DataError, match="COCO style"):
        load_coco_references(path)


def test_empty_reference_list_is_a_clear_error(demo_corpus, write_config, tmp_path):
    rows = json.loads((demo_corpus / "annotations" / "cap_test.json").read_text())
    rows[1]["desc"] = []
    bad = tmp_path / "cap_bad.json"
    bad.write_text(json.dumps(rows))
    config = write_config(val=[demo_entry(demo_corpus, "val", str(bad), "cap%tv")])
    result = run(["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 2
    assert "empty caption list" in result.stderr and "cap_bad.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_caption_and_qa_training_and_evaluation(demo_corpus, write_config, tmp_path):
    """One run trains captioning and QA (a QA file without desc) and evaluates both: CIDEr etc. and
    accuracy in metrics.jsonl, generated captions and answers as JSON beside it."""
    train = [demo_entry(demo_corpus, "train", "cap_train.json", "cap%tvas", steps=2),
             demo_entry(demo_corpus, "train", "qa_train.json", "qa%tv", steps=2)]
    for entry in train:
        entry.pop("epoch")
    # a VQAv2-style test file: one question a row, ten people's answers, the release's question ids
    vqa_rows = [{"video_id": row["video_id"], "question": question, "question_id": 1000 + 10 * i + k,
                 "answer": [answer] * 4 + [f"{answer}s", "red", "two", "2", "no", answer.upper()]}
                for i, row in enumerate(json.loads((demo_corpus / "annotations" / "qa_test.json").read_text())[:3])
                for k, (question, answer) in enumerate(zip(row["question"], row["answer"]))]
    vqa_file = tmp_path / "vqa_test.json"
    vqa_file.write_text(json.dumps(vqa_rows))
    val = [demo_entry(demo_corpus, "val", "cap_test.json", "cap%tvas%tv", batch_size=8,
                      annfile=str(demo_corpus / "annotations" / "cap_test_coco.json")),
           demo_entry(demo_corpus, "val", "qa_test.json", "qa%tv", batch_size=8),
           demo_entry(demo_corpus, "val", str(vqa_file), "qa%tv", batch_size=8, make_submission=True)]
    config = write_config(train, val, run={"learning_rate": 1e-4, "valid_freq": 1, "first_eval": False, "log_steps": 1},
                          model={"beam_size": 2, "max_caption_len": 8, "max_omni_caption_len": 8})
    out = tmp_path / "run"
    result = run(["--config", str(config), "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(out)
    caption = [r for r in records if r["type"] == "cap"]
    assert {r["group"] for r in caption} == {"tvas", "tv"}
    assert all({"bleu4", "meteor", "rouge_l", "cider"} <= set(r["metrics"]) for r in caption)
    qa = [r for r in records if r["type"] == "qa"]
    test_clips = json.loads((demo_corpus / "annotations" / "qa_test.json").read_text())
    questions = sum(len(row["question"]) for row in test_clips)
    assert len(qa) == 2 and qa[0]["metrics"]["questions"] == questions == 4 * len(test_clips)
    step = caption[0]["step"]
    captions = json.loads((out / "log" / f"predictions_demo_cap_test_cap_step{step}.json").read_text())
    assert set(captions) == {"tvas", "tv"} and len(captions["tv"]) == len(test_clips)
    answers = json.loads((out / "log" / f"predictions_demo_qa_test_qa_step{step}.json").read_text())["tv"]
    assert len(answers) == questions and {"question", "answer", "prediction", "video_id"} <= set(answers[0])
    log = (out / "log" / "log.txt").read_text()
    assert "caption_tvas" in log and "qa_tv" in log
    # soft accuracy over the ten answers, and the submission the VQAv2 server reads
    vqa_answers = json.loads((out / "log" / f"predictions_demo_vqa_test_qa_step{step}.json").read_text())["tv"]
    assert [r["question_id"] for r in vqa_answers] == [str(r["question_id"]) for r in vqa_rows]
    expected = 100 * sum(vqa_soft_accuracy(r["prediction"], r["answers"]) for r in vqa_answers) / len(vqa_rows)
    assert qa[1]["metrics"]["accuracy"] == round(expected, 2)
    submission = json.loads((out / "log" / f"submission_demo_vqa_test_tv_step{step}.json").read_text())
    assert submission == [{"question_id": r["question_id"], "answer": p["prediction"]}
                          for r, p in zip(vqa_rows, vqa_answers)]
