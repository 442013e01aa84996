"""The embedded demo: build the synthetic corpus, run every demo config on it, print a summary.

`bash scripts/vast/demo.sh` (or `python -m vast.demo`) is the README's main command. It needs no
download: the corpus is generated locally (datasets/demo/) and the demo configs live in
config/vast/demo/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from vast.cli import USER_ERROR_EXIT, execute
from vast.config import PROJECT_ROOT, load_config, read_json
from vast.data.annotations import load_annotations
from vast.data.batch import texts_for_group
from vast.data.demo_corpus import build_demo_corpus, fact_words
from vast import distributed
from vast.engine.logging import setup_logging
from vast.errors import VastError
from vast.evaluation.captioning import coco_caption_scores, load_coco_references
from vast.evaluation.qa import normalize_answer, qa_accuracy
from vast.labeling.asr import word_error_rate
from vast.labeling.config import load_label_config
from vast.labeling.pipeline import label_corpus
from vast.labeling.quality import fact_shares

# The chain: (config, options) in order; each run's output feeds the next through --pretrain_dir.
# LABELING is not a run.py config: the labeling pipeline, run between the captioners and pretraining.
LABELING = "labeling"
CHAIN = (
    ("label-captioners-demo", {}),
    (LABELING, {}),
    ("pretrain-demo", {}),
    ("retrieval-demo", {"pretrain_dir": "pretrain-demo"}),
    ("caption-demo", {"pretrain_dir": "pretrain-demo"}),
    ("qa-demo", {"pretrain_dir": "pretrain-demo"}),
)
INSPECT_CONFIGS = ("label-captioners-demo", "retrieval-demo", "caption-demo", "qa-demo", "captioner-demo")
RAW_CLIPS = 64
# The demo's labeling settings (the rest as in label-corpus.json): its own captioners for both
# groups, the frame count its models train with, small shards, and sampling at temperature 0.7:
# captioners trained for 40 steps name a clip's facts more often at 0.7 than at the original's 1.0
# (measured on the 64 raw clips: all of colour, shape and direction 10% against 5%, sound 58% against 46%).
LABEL_SETTINGS = {"frames": 4, "shard_size": 16, "batch_size": 16, "caption_temperature": 0.7}
CAPTION_FACTS = {"vision_cap": ("colour", "shape", "direction"), "audio_cap": ("sound",),
                 "vast_cap": ("colour", "shape", "direction", "sound", "word")}


def corpus_summary(manifest: dict) -> list[str]:
    clips = manifest["clips"]
    durations = [clip["duration"] for clip in clips.values()]
    splits = {}
    for clip in clips.values():
        splits[clip["split"]] = splits.get(clip["split"], 0) + 1
    return [
        f"clips: {len(clips)} ({', '.join(f'{n} {s}' for s, n in sorted(splits.items()))}), "
        f"duration {sum(durations):.0f} s in all, {min(durations):.1f}-{max(durations):.1f} s each",
        f"distinct pictures: {len({c['picture'] for c in clips.values()})}, sounds: "
        f"{len({c['sound'] for c in clips.values()})}, spoken phrases: {len({c['speech'] for c in clips.values()})}",
    ]


def _relocate(config, data_dir: Path, output_dir: Path) -> None:
    """The demo configs name datasets/demo/... and output/demo/...; point them at the folders asked for."""
    for entry in config.train + config.val:
        for key in ("txt", "vision", "audio", "annfile"):
            value = getattr(entry, key)
            if value.startswith("datasets/demo/"):
                setattr(entry, key, str(data_dir / value[len("datasets/demo/"):]))
        entry.shards = [str(output_dir / s[len("output/demo/"):]) if str(s).startswith("output/demo/") else s
                        for s in entry.shards]


def _demo_config(name: str, overrides: dict, args):
    config = load_config(PROJECT_ROOT / "config" / "vast" / "demo" / f"{name}.json", overrides)
    _relocate(config, Path(args.data_dir), Path(args.output_dir))
    return config


def label_raw_clips(args) -> dict:
    """The labeling pipeline on the corpus's raw clips, with the captioners the demo just trained."""
    captioners = str(Path(args.output_dir) / "label-captioners-demo")
    config = load_label_config({"vision_captioner": captioners, "audio_captioner": captioners,
                                "llm": args.llm, **LABEL_SETTINGS})
    out = Path(args.output_dir) / LABELING
    report = label_corpus(Path(args.data_dir) / "raw", out, config)
    truth = {row["clip_id"]: row for row in read_json(Path(args.data_dir) / "annotations" / "raw_truth.json",
                                                       "raw clip truth")}
    labels = read_json(out / "annotations.json", "labels")
    report["quality"] = label_quality(labels, truth)
    return report


def label_quality(labels: list[dict], truth: dict[str, dict]) -> dict:
    """Subtitle WER against the spoken phrases, and per caption kind the share naming each fact."""
    facts = {clip: fact_words(row) for clip, row in truth.items()}
    quality = {"clips": len(labels), "of": len(truth),
               "subtitle_wer": word_error_rate([truth[r["clip_id"]]["phrase"] for r in labels],
                                               [r["subtitle"] for r in labels])}
    for field, expected in CAPTION_FACTS.items():
        captions = {r["clip_id"]: r[field] for r in labels}
        quality[field] = fact_shares(captions, facts, expected)
    quality["omni_source"] = dict(Counter(r["omni_source"] for r in labels))
    return quality


def quality_table(quality: dict) -> list[str]:
    columns = ("colour", "shape", "direction", "sound", "word", "all")
    lines = [f"{'captions':<10}" + "".join(f"{c:>10}" for c in columns)]
    for field, name in (("vision_cap", "vision"), ("audio_cap", "audio"), ("vast_cap", "omni")):
        shares = quality[field]
        lines.append(f"{name:<10}" + "".join(f"{shares[c] * 100:>10.1f}" if c in shares else f"{'':>10}"
                                             for c in columns))
    sources = ", ".join(f"{n} {s}" for s, n in sorted(quality["omni_source"].items()))
    lines.append(f"subtitle WER {quality['subtitle_wer'] * 100:.1f}% over {quality['clips']} of "
                 f"{quality['of']} raw clips; omni captions by: {sources}")
    return lines


def _run(name: str, options: dict, args, dist_info):
    if name == LABELING:
        return label_raw_clips(args)
    output_dir = Path(args.output_dir) / name
    overrides = {"output_dir": [str(output_dir)]}
    for key, value in options.items():
        overrides[key] = [str(Path(args.output_dir) / value) if key == "pretrain_dir" else str(value)]
    config = _demo_config(name, overrides, args)
    setup_logging(output_dir, dist_info.is_main)
    if config.run_cfg.mode == "training":
        (output_dir / "log" / "metrics.jsonl").unlink(missing_ok=True)  # a rerun appends to a fresh file
    return execute(config, dist_info)


def _last(records: list[dict], task_type: str) -> list[dict]:
    last = max(r["step"] for r in records)
    return [r for r in records if r["step"] == last and r.get("type") == task_type]


def caption_baseline(config) -> tuple[str, dict]:
    """The most frequent training caption, given for every test clip, scored like the model."""
    counts = Counter(text for entry in config.train for s in load_annotations(entry.txt)
                     for text in texts_for_group(s, entry.task.modalities))
    caption = counts.most_common(1)[0][0]
    entry = config.val[0]
    references = load_coco_references(entry.annfile)
    clips = [s.id for s in load_annotations(entry.txt)]
    return caption, coco_caption_scores(references, {clip: caption for clip in clips}, entry.annfile)


def qa_baseline(config) -> tuple[str, dict]:
    """The most frequent training answer, given for every test question."""
    counts = Counter(normalize_answer(a) for entry in config.train for s in load_annotations(entry.txt) for a in s.answers)
    answer = counts.most_common(1)[0][0]
    records = [{"answer": a, "prediction": answer} for entry in config.val for s in load_annotations(entry.txt)
               for a in s.answers]
    return answer, qa_accuracy(records)


def results_table(records: list[dict]) -> list[str]:
    """Retrieval results of the last evaluation: one row per modality group."""
    rows = _last(records, "ret")
    lines = [f"{'group':<6} {'ITC R@1':>8} {'ITM R@1':>8} {'ITM R@5':>8} {'ITM R@10':>9} {'MedR':>5}"]
    for r in rows:
        itc, itm = r["metrics"]["t2v_itc"], r["metrics"].get("t2v_itm", r["metrics"]["t2v_itc"])
        lines.append(f"{r['group']:<6} {itc['r1']:>8.1f} {itm['r1']:>8.1f} {itm['r5']:>8.1f} {itm['r10']:>9.1f} {itm['medr']:>5.0f}")
    return lines


def generation_table(caption_records, qa_records, caption_base, qa_base) -> list[str]:
    lines = [f"{'task':<22} {'group':<6} {'model':>7} {'baseline':>9}  baseline"]
    for r in _last(caption_records, "cap"):
        lines.append(f"{'captioning CIDEr':<22} {r['group']:<6} {r['metrics']['cider']:>7.1f} "
                     f"{caption_base[1]['cider']:>9.1f}  most frequent training caption")
        lines.append(f"{'captioning BLEU-4':<22} {r['group']:<6} {r['metrics']['bleu4']:>7.1f} "
                     f"{caption_base[1]['bleu4']:>9.1f}  {caption_base[0]!r}")
    for r in _last(qa_records, "qa"):
        lines.append(f"{'QA accuracy':<22} {r['group']:<6} {r['metrics']['accuracy']:>7.1f} "
                     f"{qa_base[1]['accuracy']:>9.1f}  most frequent answer {qa_base[0]!r}")
    return lines


def subtitle_table(data_dir: Path, target: Path) -> Path:
    """{clip id: subtitle} of every annotated demo clip, so the search index has the subtitle groups
    (tvs, tvas) the retrieval demo was fine-tuned on."""
    table = {}
    for name in ("ret_train.json", "ret_test.json"):
        for row in read_json(data_dir / "annotations" / name, name):
            table[row["video_id"]] = row["subtitle"]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=str(PROJECT_ROOT / "datasets" / "demo"))
    parser.add_argument("--output_dir", default=str(PROJECT_ROOT / "output" / "demo"))
    parser.add_argument("--clips", type=int, default=320)
    parser.add_argument("--raw_clips", type=int, default=RAW_CLIPS, help="unlabeled clips the demo labels itself")
    parser.add_argument("--llm", default="bundled",
                        help="the omni-caption LLM of the labeling step (bundled: Gemma 3 270M; '' = template)")
    parser.add_argument("--inspect", action="store_true", help="only decode one batch per demo dataset and describe it")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    manifest = build_demo_corpus(args.data_dir, num_clips=args.clips, raw_clips=args.raw_clips)
    print(f"demo corpus in {args.data_dir}")
    for line in corpus_summary(manifest):
        print("  " + line)

    dist_info = distributed.init_distributed()
    try:
        if args.inspect:
            rows = [(name, row) for name in INSPECT_CONFIGS for row in _run(name, {"mode": "inspect"}, args, dist_info)]
        else:
            results = {}
            for name, options in CHAIN:
                step_started = time.perf_counter()
                results[name] = _run(name, options, args, dist_info)
                print(f"{name}: done in {time.perf_counter() - step_started:.0f} s ({Path(args.output_dir) / name})")
    except VastError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
    finally:
        distributed.shutdown()

    if args.inspect:
        print("\none batch per dataset and task (what the model receives):")
        print(f"  {'config':<16} {'split':<6} {'task':<28} {'items':>5}  fields")
        for name, row in rows:
            fields = ", ".join(f"{k} {v}" for k, v in row["fields"].items())
            print(f"  {name:<16} {row['split']:<6} {row['task']:<28} {row['items']:>5}  {fields}")
    else:
        print(f"\nlabels the pipeline gave the {args.raw_clips} raw clips (% of captions naming each fact):")
        for line in quality_table(results[LABELING]["quality"]):
            print("  " + line)
        print("\ntext-to-video retrieval on the demo test split (R@k in %, after fine-tuning):")
        for line in results_table(results["retrieval-demo"]):
            print("  " + line)
        caption_base = caption_baseline(_demo_config("caption-demo", {}, args))
        qa_base = qa_baseline(_demo_config("qa-demo", {}, args))
        print("\ncaptioning and open-ended QA on the demo test split (x100), next to trivial baselines:")
        for line in generation_table(results["caption-demo"], results["qa-demo"], caption_base, qa_base):
            print("  " + line)
        out = Path(args.output_dir)
        subtitles = subtitle_table(Path(args.data_dir), out / "search-subtitles.json")
        print("\nbrowse the demo clips with the fine-tuned retrieval model (in the project's environment, e.g. after "
              "source .venv/bin/activate; then open http://127.0.0.1:8000/):")
        print(f"  vast embed {Path(args.data_dir) / 'videos'} --model {out / 'retrieval-demo'} --subtitles {subtitles} "
              f"--out {out / 'search-index'} && vast serve {out / 'search-index'}")
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
