"""Speed-up of key-value-cached caption generation over re-encoding the prefix every step.

Generates captions of exactly `--tokens` tokens (the [SEP] logit is suppressed so every run has the
same length) with beam search, once with the cache and once without, in the same process, and
prints the time of each and their ratio. The decoder is a random BERT with cross-attention of the
chosen size over a fusion memory of the chosen length (VAST's MSRVTT captioning: 8 frames x 257
vision tokens + 1 audio clip x 512 tokens + 70 subtitle tokens = 2638).

    python bench/generation_cache.py                      # BERT-base, memory 2638, beam 3, 40 tokens
    python bench/generation_cache.py --size minilm --memory 300 --batch 4
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from vast.models.generation import GenerationConfig, MaskSlotDecoder, generate
from vast.models.text import create_text_encoder

SIZES = {"base": "bert_base_uncased", "minilm": "minilm_l6"}


def run(decoder_factory, config, sep, pad) -> tuple[float, list]:
    started = time.perf_counter()
    with torch.no_grad():
        tokens = generate(decoder_factory(), config, sep, pad)
    return time.perf_counter() - started, tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="base")
    parser.add_argument("--memory", type=int, default=2638, help="fusion memory length (tokens)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    lm = create_text_encoder(SIZES[args.size], add_cross_attention=True, with_lm_head=True).eval()
    sep, pad, cls, mask = 102, 0, 101, 103
    with torch.no_grad():
        lm.cls.predictions.bias[sep] = -1e4  # never end early: every caption has exactly --tokens tokens
    memory = torch.randn(args.batch, args.memory, lm.config.hidden_size)
    prefix = torch.full((args.batch, 1), cls)

    def factory(use_cache):
        return lambda: MaskSlotDecoder(lm, memory, None, prefix, torch.ones_like(prefix), mask, use_cache=use_cache)

    config = GenerationConfig(strategy="beam", beam_size=args.beam, max_len=args.tokens)
    run(factory(True), GenerationConfig(strategy="greedy", max_len=2), sep, pad)  # warm-up
    cached_s, cached = run(factory(True), config, sep, pad)
    uncached_s, uncached = run(factory(False), GenerationConfig(**{**vars(config), "use_cache": False}), sep, pad)
    lengths = {len(seq[0]) for seq in cached}

    print(f"command: python bench/generation_cache.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"decoder {args.size} ({lm.config.num_hidden_layers} layers, width {lm.config.hidden_size}), memory "
          f"{args.memory} tokens, batch {args.batch}, beam {args.beam}, {sorted(lengths)} tokens per caption")
    print(f"uncached: {uncached_s:.2f} s   cached: {cached_s:.2f} s   speed-up: {uncached_s / cached_s:.1f}x")
    print(f"identical tokens: {cached == uncached}")
    return 0 if cached == uncached else 1


if __name__ == "__main__":
    sys.exit(main())
