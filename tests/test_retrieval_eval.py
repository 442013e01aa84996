"""Retrieval metrics on hand-made score matrices."""

import torch

from vast.evaluation.retrieval import (
    candidate_pairs, clip_to_text_ranks, recall_metrics, text_to_clip_ranks,
)


def test_recall_metrics():
    metrics = recall_metrics(torch.tensor([0, 0, 1, 4, 9, 20]))
    assert metrics["r1"] == round(2 / 6 * 100, 2)
    assert metrics["r5"] == round(4 / 6 * 100, 2) and metrics["r10"] == round(5 / 6 * 100, 2)
    assert metrics["medr"] == 3.5 and metrics["meanr"] == round((1 + 1 + 2 + 5 + 10 + 21) / 6, 2)
    assert metrics["rmean"] == round((metrics["r1"] + metrics["r5"] + metrics["r10"]) / 3, 2)


def test_ranks_with_several_captions_per_clip():
    # texts 0, 1 describe clip 0; text 2 describes clip 1
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    target = torch.tensor([0, 0, 1])
    assert text_to_clip_ranks(scores, target).tolist() == [0, 1, 0]
    # clip 0's best text (text 0) ranks first; clip 1's best text is text 1 (0.8) which is wrong, its own is second
    assert clip_to_text_ranks(scores, target).tolist() == [0, 1]


def testcandidate_pairs_cover_top_k_each_way():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.1]])
    assert candidate_pairs(sim, 1, False) == {(0, 0), (1, 1)}
    assert candidate_pairs(sim, 1, True) == {(0, 0), (1, 1), (0, 2)}
