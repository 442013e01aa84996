"""Speed and fact retention of the LLM omni captioner on the demo corpus's captions.

Builds one record per demo clip from the corpus generator's own captions (`vision_cap`, `audio_cap`,
`subtitle` as the VAST-27M-style annotation file holds them), runs `LlmOmniCaptioner` over them and
prints: the model's load time (a conversion when `cache_dir` holds no converted copy yet, else the
cached load), generation speed (new tokens/s, clips/s), the share of the LLM's own answers that name
each fact of the clip (colour, the word circle, both ends of the path, the background sound, the
spoken key word) and all of them, the fallback rate with its reasons, and the same retention for
the captions finally written (LLM answers that pass, template sentences for the rest).

    python bench/omni_llm.py --clips 48
    python bench/omni_llm.py --clips 48 --cache_dir /tmp/fresh_cache     # measure the first conversion
    python bench/omni_llm.py --clips 48 --prompt my_prompt.txt --show 10  # try a prompt, show answers
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import resource
import shlex
import sys
import time
from collections import Counter

import torch

from vast.data.demo_corpus import make_annotations, plan_clips
from vast.labeling.llm import BUNDLED, LlmConfig, LlmOmniCaptioner, default_cache_dir

# The words that name each fact; a sound may be named by its noun or its -ing form.
SOUND_WORDS = {"hum": ("hum",), "alarm": ("alarm",), "hiss": ("hiss",), "whistle": ("whistl",)}
FACTS = ("colour", "shape", "direction", "sound", "word")


def facts_named(text: str, clip) -> dict[str, bool]:
    words = re.findall(r"[a-z]+", text.lower())
    joined = " ".join(words)
    start, end = clip.motion.split(" to ")
    named = {
        "colour": clip.color in words,
        "shape": "circle" in words,
        "direction": start in words and end in words,
        "sound": any(w.startswith(stem) for w in words for stem in SOUND_WORDS[clip.sound]),
        "word": clip.word in words,
    }
    named["all"] = all(named.values()) and bool(joined)
    return named


def retention(texts: list[str], clips) -> dict[str, float]:
    counts = Counter()
    for text, clip in zip(texts, clips):
        counts.update(k for k, v in facts_named(text, clip).items() if v)
    return {k: counts[k] / len(clips) for k in (*FACTS, "all")}


def demo_records(num_clips: int, seed: int) -> tuple[list[dict], list]:
    """The first `num_clips` clips of a demo corpus plan, with the captions its annotations give them."""
    clips = plan_clips(max(num_clips, 24), seed)[:num_clips]
    annotations = make_annotations(clips, seed)
    by_id = {r["clip_id"]: r for r in annotations["vast27m_train"] + annotations["vast27m_test"]}
    records = [{k: by_id[c.clip_id][k] for k in ("clip_id", "vision_cap", "audio_cap", "subtitle")} for c in clips]
    return records, clips


@torch.no_grad()
def plain_generation(stage: LlmOmniCaptioner, records: list[dict]) -> tuple[float, list[str]]:
    """The baseline: whole prompts, left-padded, through `generate()` with no shared prefix cache."""
    tokenizer, model = stage.tokenizer, stage.model
    tokenizer.padding_side = "left"
    fields = [stage._fields(r) for r in records]
    prompts = [stage._full_prompt(stage.prompt.render(f["vision"], f["audio"], f["speech"]))[0] for f in fields]
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))  # the stage's batching, for a fair race
    texts = [""] * len(prompts)
    started = time.perf_counter()
    for start in range(0, len(order), stage.config.batch_size):
        rows = order[start:start + stage.config.batch_size]
        batch = tokenizer([prompts[k] for k in rows], add_special_tokens=stage.add_special, padding=True,
                          return_tensors="pt")
        out = model.generate(**batch, max_new_tokens=stage.config.max_new_tokens, do_sample=False,
                             eos_token_id=stage.stop_ids, pad_token_id=stage.pad_id)
        for k, row in zip(rows, out[:, batch.input_ids.shape[1]:]):
            texts[k] = tokenizer.decode(row, skip_special_tokens=True).strip("\n").split("\n")[0].strip()
    return time.perf_counter() - started, texts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--model", default=BUNDLED, help="bundled, a Hugging Face folder or a .gguf file")
    parser.add_argument("--prompt", default="", help="prompt file (default: the shipped one)")
    parser.add_argument("--batch_size", type=int, default=LlmConfig.batch_size)
    parser.add_argument("--captions_per_field", type=int, default=LlmConfig.captions_per_field)
    parser.add_argument("--max_new_tokens", type=int, default=LlmConfig.max_new_tokens)
    parser.add_argument("--threads", type=int, default=LlmConfig.threads)
    parser.add_argument("--cache_dir", default="", help=f"converted models (default {default_cache_dir()})")
    parser.add_argument("--seed", type=int, default=0, help="demo corpus seed")
    parser.add_argument("--show", type=int, default=0, help="print this many answers")
    parser.add_argument("--baseline", action="store_true",
                        help="also time plain batched generation of the whole prompts (no shared prefix cache)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    config = LlmConfig(model=args.model, prompt_file=args.prompt, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, threads=args.threads, cache_dir=args.cache_dir,
                       captions_per_field=args.captions_per_field)
    stage = LlmOmniCaptioner(config)
    records, clips = demo_records(args.clips, args.seed)

    load_before = os.getloadavg()[0]  # other work on the machine slows every figure below
    started = time.perf_counter()
    stage.setup()
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    answers = stage.answer(records)
    generate_seconds = time.perf_counter() - started
    stage.write(records, answers)

    tokens = sum(a.tokens for a in answers)
    reasons = Counter(a.problem for a in answers if a.problem)
    raw = retention([a.text for a in answers], clips)
    final = retention([r["vast_cap"][0] for r in records], clips)
    print("command: python bench/omni_llm.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, load average before the run {load_before:.1f}, after {os.getloadavg()[0]:.1f}")
    print(f"model: {args.model}, prompt: {stage.prompt.path.name}, {len(stage.prefix_ids[0])} shared prompt tokens, "
          f"batch {args.batch_size}, {args.clips} clips")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    print(f"load: {load_seconds:.1f} s; peak memory {peak_gb:.1f} GB")
    print(f"generation: {generate_seconds:.1f} s, {tokens} new tokens, {tokens / generate_seconds:.1f} tokens/s, "
          f"{args.clips / generate_seconds:.2f} clips/s")
    print("fact retention, LLM answers:  " + "  ".join(f"{k} {v:.2f}" for k, v in raw.items()))
    print(f"fallback to template: {sum(reasons.values())}/{len(answers)} = {sum(reasons.values()) / len(answers):.2f}"
          + (" (" + ", ".join(f"{r}: {n}" for r, n in reasons.most_common()) + ")" if reasons else ""))
    print("fact retention, written captions:  " + "  ".join(f"{k} {v:.2f}" for k, v in final.items()))
    if args.baseline:
        seconds, texts = plain_generation(stage, records)
        same = sum(text == answer.text for text, answer in zip(texts, answers))
        print(f"baseline, whole prompts left-padded: {seconds:.1f} s, {args.clips / seconds:.2f} clips/s; "
              f"shared prefix speed-up {seconds / generate_seconds:.2f}x; identical answers {same}/{len(texts)}")
    for answer, clip in list(zip(answers, clips))[: args.show]:
        print(f"  [{answer.problem or 'ok'}] {answer.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
