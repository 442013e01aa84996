"""The demo command: its inspect path on the small corpus, and the results table it prints."""

from vast.demo import main, results_table


def test_inspect_runs_every_demo_config(demo_corpus, tmp_path, capsys):
    assert main(["--data_dir", str(demo_corpus), "--output_dir", str(tmp_path), "--clips", "24", "--raw_clips", "0",
                 "--inspect"]) == 0
    out = capsys.readouterr().out
    for name in ("label-captioners-demo", "retrieval-demo", "caption-demo", "qa-demo", "captioner-demo"):
        assert name in out
    assert "questions" in out and "vision 16x4x3x64x64" in out


def test_results_table_reads_the_last_evaluation():
    metrics = {"r1": 70.0, "r5": 90.0, "r10": 95.0, "rmean": 85.0, "medr": 1.0, "meanr": 2.0}
    records = [{"step": 0, "type": "ret", "group": "tvas", "metrics": {"t2v_itc": dict(metrics, r1=1.0)}},
               {"step": 5, "type": "ret", "group": "tvas", "metrics": {"t2v_itc": metrics, "t2v_itm": metrics}}]
    lines = results_table(records)
    assert len(lines) == 2 and lines[1].split()[:3] == ["tvas", "70.0", "70.0"]


def test_baselines_use_the_most_frequent_training_caption_and_answer(demo_corpus, tmp_path):
    import argparse
    import json
    from collections import Counter

    from vast.demo import _demo_config, caption_baseline, generation_table, qa_baseline

    args = argparse.Namespace(data_dir=str(demo_corpus), output_dir=str(tmp_path))
    caption, scores = caption_baseline(_demo_config("caption-demo", {}, args))
    train = json.loads((demo_corpus / "annotations" / "cap_train.json").read_text())
    assert caption == Counter(row["desc"] for row in train).most_common(1)[0][0]
    assert 0 < scores["cider"] < 300
    answer, accuracy = qa_baseline(_demo_config("qa-demo", {}, args))
    answers = [row["answer"] for row in json.loads((demo_corpus / "annotations" / "qa_train.json").read_text())]
    assert answer == Counter(answers).most_common(1)[0][0]
    test = [a for row in json.loads((demo_corpus / "annotations" / "qa_test.json").read_text()) for a in row["answer"]]
    assert accuracy["accuracy"] == round(100 * test.count(answer) / len(test), 2)
    lines = generation_table([{"step": 3, "type": "cap", "group": "tvas", "metrics": {"cider": 250.0, "bleu4": 50.0}}],
                             [{"step": 3, "type": "qa", "group": "tvas", "metrics": {"accuracy": 80.0}}],
                             (caption, scores), (answer, accuracy))
    assert "250.0" in lines[1] and "80.0" in lines[3]
