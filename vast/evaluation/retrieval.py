"""Retrieval evaluation: rank by contrastive similarity, rerank the top candidates with the matching head.

`top_k`, `candidate_pairs` and `rerank` are the ranking rules; `vast search` uses the same ones.

Memory stays bounded: the first pass keeps only pooled features (and caption tokens); a second pass
over the clips re-encodes one batch at a time and builds fusion memories only for the clips that
some query has among its top `itm_rerank_num` candidates.
"""

from __future__ import annotations

import logging

import torch

from vast.distributed import all_gather_objects
from vast.errors import DataError
from vast.tasks import TaskType

logger = logging.getLogger(__name__)

ITM_CHUNK = 64  # (text, clip) pairs scored per matching forward


def recall_metrics(ranks: torch.Tensor) -> dict[str, float]:
    """ranks: 0-based rank of the correct item for each query."""
    ranks = ranks.float()
    r1, r5, r10 = ((ranks < k).float().mean().item() * 100 for k in (1, 5, 10))
    return {"r1": round(r1, 2), "r5": round(r5, 2), "r10": round(r10, 2), "rmean": round((r1 + r5 + r10) / 3, 2),
            "medr": float((ranks + 1).quantile(0.5).item()), "meanr": round((ranks + 1).mean().item(), 2)}


def text_to_clip_ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """scores [T, V], target [T] clip index -> rank of the target among the clips for each text."""
    target_scores = scores.gather(1, target[:, None])
    return (scores > target_scores).sum(dim=1)


def clip_to_text_ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A clip with several captions is retrieved correctly at the best rank of any of them."""
    clip_scores = scores.t()  # [V, T]
    order = clip_scores.argsort(dim=1, descending=True)
    hits = target[order] == torch.arange(clip_scores.shape[0])[:, None]
    return hits.float().argmax(dim=1)


def _encode_pass(model, loader, groups):
    """Pass 1: pooled condition features per group, caption features/tokens per group, clip ids."""
    clip_ids, cond, texts = [], {g.name: [] for g in groups}, {g.name: [] for g in groups}
    for batch in loader:
        batch.to(model.device)
        media = model.encode_batch(batch, groups)
        clip_ids += batch.ids
        for group in groups:
            cond[group.name].append(model.condition_features(media, group).float().cpu())
            captions = batch.texts_for(group)
            if captions:
                tokens = model.tokenize(captions.texts, model.caption_length(captions.omni), pad_to_max=True)
                feats = model.text_features(tokens).float().cpu()
                texts[group.name].append((feats, tokens.input_ids.cpu(), tokens.attention_mask.cpu(), captions.owners))
    return clip_ids, cond, texts


def _cat_padded(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack token rows of batches padded to different lengths (omni and plain captions): zero-pad."""
    width = max(r.shape[1] for r in rows)
    return torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1])) for r in rows])


def _gather(clip_ids, cond, texts, groups):
    ranks = all_gather_objects((clip_ids, cond, texts))
    all_ids = [i for r in ranks for i in r[0]]
    merged = {}
    for group in groups:
        cond_feats = torch.cat([f for r in ranks for f in r[1][group.name]])
        parts = [p for r in ranks for p in r[2][group.name]]
        if not parts:
            raise DataError(f"no captions to evaluate group {group} with (check the annotation file)")
        merged[group.name] = {
            "cond": cond_feats, "text": torch.cat([p[0] for p in parts]),
            "input_ids": _cat_padded([p[1] for p in parts]), "attention_mask": _cat_padded([p[2] for p in parts]),
            "owners": [o for p in parts for o in p[3]],
        }
    return all_ids, merged


def top_k(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [T, min(k, V)] of each row's k highest contrastive scores, best first (exact)."""
    return similarity.topk(min(k, similarity.shape[1]), dim=1).indices


def candidate_pairs(similarity: torch.Tensor, k: int, both_directions: bool = False) -> set[tuple[int, int]]:
    """(text, clip) pairs the matching head scores: each text's top k clips (and each clip's top k
    texts when both directions are evaluated)."""
    pairs = {(t, int(v)) for t, row in enumerate(top_k(similarity, k).tolist()) for v in row}
    if both_directions:
        pairs |= {(int(t), v) for v, row in enumerate(top_k(similarity.t(), k).tolist()) for t in row}
    return pairs


def rerank(similarity: torch.Tensor, match_scores) -> torch.Tensor:
    """Scores after matching-head reranking: the scored candidates ([0, 1] probabilities) rank above
    everything else, which keeps its contrastive order below them. `match_scores`: (t, v, p) triples."""
    reranked = similarity - 100.0
    for t, v, score in match_scores:
        reranked[t, v] = score
    return reranked


def _matching_pass(model, loader, groups, data, clip_index, pairs_by_group):
    """Pass 2: match scores for the candidate pairs of the clips this rank holds."""
    from vast.models.vast import TextTokens

    scores = {g.name: [] for g in groups}
    for batch in loader:
        batch.to(model.device)
        media = model.encode_batch(batch, groups)
        local = {clip_index[i]: row for row, i in enumerate(batch.ids)}
        for group in groups:
            pairs = [(t, v) for v in local for t in pairs_by_group[group.name].get(v, ())]
            if not pairs:
                continue
            memory, memory_mask = model.fusion_memory(media, group)
            d = data[group.name]
            for start in range(0, len(pairs), ITM_CHUNK):
                chunk = pairs[start:start + ITM_CHUNK]
                text_rows = torch.tensor([t for t, _ in chunk])
                clip_rows = torch.tensor([local[v] for _, v in chunk], device=memory.device)
                attention = d["attention_mask"][text_rows]
                width = int(attention.sum(dim=1).max())  # drop the chunk's all-padding columns (masked anyway)
                tokens = TextTokens(d["input_ids"][text_rows, :width].to(model.device), attention[:, :width].to(model.device))
                probs = model.match_logits(tokens, memory, memory_mask, clip_rows).float().softmax(dim=-1)[:, 1]
                scores[group.name] += list(zip([t for t, _ in chunk], [v for _, v in chunk], probs.cpu().tolist()))
    return scores


@torch.no_grad()
def evaluate_retrieval(model, loader, entry, model_cfg, predictions: dict | None = None) -> dict[str, dict]:
    """Metrics per group: text->clip (and clip->text when `ret_bidirection_evaluation`) for the
    contrastive scores (`itc`) and after matching-head reranking of the top candidates (`itm`)."""
    groups = entry.task.groups(TaskType.RETRIEVAL)
    both = bool(model_cfg["ret_bidirection_evaluation"])
    k = int(model_cfg["itm_rerank_num"])
    clip_ids, all_data = _gather(*_encode_pass(model, loader, groups), groups)
    clip_index = {clip: i for i, clip in enumerate(clip_ids)}
    results, pairs_by_group, similarity = {}, {}, {}
    for group in groups:
        d = all_data[group.name]
        similarity[group.name] = d["text"] @ d["cond"].t()  # [T, V]
        pairs_by_group[group.name] = {}
        if k > 0:
            for t, v in candidate_pairs(similarity[group.name], k, both):
                pairs_by_group[group.name].setdefault(v, []).append(t)
    itm_scores = _matching_pass(model, loader, groups, all_data, clip_index, pairs_by_group) if k > 0 else {}
    gathered_itm = all_gather_objects(itm_scores)
    for group in groups:
        d = all_data[group.name]
        target = torch.tensor([clip_index[o] for o in d["owners"]])
        sim = similarity[group.name]
        metrics = {"t2v_itc": recall_metrics(text_to_clip_ranks(sim, target))}
        if both:
            metrics["v2t_itc"] = recall_metrics(clip_to_text_ranks(sim, target))
        if k > 0:
            reranked = rerank(sim, (triple for part in gathered_itm for triple in part.get(group.name, [])))
            metrics["t2v_itm"] = recall_metrics(text_to_clip_ranks(reranked, target))
            if both:
                metrics["v2t_itm"] = recall_metrics(clip_to_text_ranks(reranked, target))
        results[group.name] = metrics
    return results
