"""How good labels are where the truth is known: the share of captions that name each fact of a clip.

A fact is named when one of its words appears in the caption as whole words (case and punctuation
aside), e.g. a clip's colour "red", or its sound as "hum" or "humming". Which words name which fact
comes from whoever knows the truth (the demo corpus: `demo_corpus.fact_words`); the subtitle's word
error rate is `asr.word_error_rate`.
"""

from __future__ import annotations

from vast.labeling.asr import normalize_words


def names(caption: str, words: tuple[str, ...]) -> bool:
    """Whether `caption` holds one of `words` (each one or more words) as whole words."""
    padded = f" {' '.join(normalize_words(caption))} "
    return any(f" {' '.join(normalize_words(word))} " in padded for word in words)


def fact_shares(captions: dict[str, list[str]], facts: dict[str, dict[str, tuple[str, ...]]],
                expected: tuple[str, ...]) -> dict[str, float]:
    """Per fact, the share (0-1) of all captions that name it, over the clips in `captions` (each
    clip's facts in `facts`: fact -> words); `all`: the share naming every fact in `expected`."""
    counts = {fact: 0 for fact in expected}
    every = total = 0
    for clip, texts in captions.items():
        for text in texts:
            named = {fact for fact in expected if names(text, facts[clip][fact])}
            for fact in named:
                counts[fact] += 1
            every += len(named) == len(expected)
            total += 1
    shares = {fact: count / max(1, total) for fact, count in counts.items()}
    shares["all"] = every / max(1, total)
    return shares
