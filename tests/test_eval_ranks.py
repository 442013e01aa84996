"""Evaluation over 2 processes equals evaluation in 1: an odd number of clips splits unevenly over the
ranks (4 and 3), and the gathered metrics and predictions are the 1-process ones, no clip scored twice
or left out, for retrieval, captioning and QA."""

import json
from pathlib import Path

import pytest

from conftest import ROOT, demo_entry
from test_cli import run, torchrun
from test_training import read_metrics

ODD = 7  # clips per file: ranks take items 0, 2, 4, 6 and 1, 3, 5
TASKS = {"ret": ("ret_test", "ret%tvas%tv"), "cap": ("cap_test", "cap%tvas"), "qa": ("qa_test", "qa%tv")}


def odd_subset(corpus: Path, stem: str, folder: Path) -> Path:
    rows = json.loads((corpus / "annotations" / f"{stem}.json").read_text())
    assert len(rows) > ODD
    path = folder / f"{stem}_odd.json"
    path.write_text(json.dumps(rows[:ODD]))
    return path


@pytest.fixture(scope="module")
def runs(demo_corpus, tmp_path_factory):
    """The same random model (fixed seed, no checkpoint) evaluated by 1 and by 2 processes."""
    folder = tmp_path_factory.mktemp("eval_ranks")
    val = [demo_entry(demo_corpus, "val", str(odd_subset(demo_corpus, stem, folder)), task, batch_size=4)
           for stem, task in TASKS.values()]
    config = folder / "cfg.json"
    config.write_text(json.dumps({
        "run_cfg": {"default": str(ROOT / "config/vast/default_run_cfg.json"), "mode": "testing", "seed": 7},
        "model_cfg": {"default": str(ROOT / "config/vast/demo/default_model_cfg.json"), "itm_rerank_num": 4,
                      "beam_size": 1, "max_caption_len": 8, "max_omni_caption_len": 8},
        "data_cfg": {"train": [], "val": val},
    }))
    outs = {}
    for processes, launcher in ((1, ()), (2, torchrun(2))):
        out = folder / f"ranks{processes}"
        result = run(["--config", str(config), "--output_dir", str(out)], launcher=launcher, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        outs[processes] = out
    return outs


def records_of(out: Path, task_type: str) -> dict[str, dict]:
    return {r["group"]: r["metrics"] for r in read_metrics(out) if r["type"] == task_type}


def predictions_of(out: Path, task_type: str) -> dict:
    stem = TASKS[task_type][0]
    return json.loads((out / "log" / f"predictions_demo_{stem}_odd_{task_type}_step0.json").read_text())


def test_retrieval_metrics_equal_over_uneven_ranks(runs):
    one, two = records_of(runs[1], "ret"), records_of(runs[2], "ret")
    assert set(one) == {"tvas", "tv"}
    assert two == one
    assert "world size 2" in (runs[2] / "log" / "log.txt").read_text()


def test_caption_predictions_and_metrics_equal_over_uneven_ranks(runs, demo_corpus):
    clips = [row["video_id"] for row in json.loads((demo_corpus / "annotations" / "cap_test.json").read_text())[:ODD]]
    one, two = predictions_of(runs[1], "cap")["tvas"], predictions_of(runs[2], "cap")["tvas"]
    assert sorted(one) == sorted(two) == sorted(clips)  # dict keys: each clip once, none missing
    assert two == one
    assert records_of(runs[2], "cap") == records_of(runs[1], "cap")
    assert "cider" in records_of(runs[1], "cap")["tvas"]


def test_qa_predictions_and_metrics_equal_over_uneven_ranks(runs):
    one, two = predictions_of(runs[1], "qa")["tv"], predictions_of(runs[2], "qa")["tv"]
    ids = [record["question_id"] for record in two]
    assert len(ids) == len(set(ids)) == 4 * ODD  # 4 questions per clip, each answered once
    assert two == one
    metrics = records_of(runs[2], "qa")
    assert metrics == records_of(runs[1], "qa") and metrics["tv"]["questions"] == 4 * ODD
