"""`vast search`: a text query against an index, ranked as retrieval evaluation ranks.

The contrastive top candidates come from `vast.evaluation.retrieval.top_k` on the feature matrix
(exact), or, for a group of `index.FAISS_MIN_CLIPS` clips or more when faiss is installed, from an
HNSW graph kept beside the shards (approximate; its candidates are then scored exactly). The
matching head then rescores the best `rerank` candidates (`rerank`, the evaluation's rule: scored
candidates above the rest, the rest in contrastive order); their clips are decoded again for it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from vast.data import media
from vast.errors import DataError
from vast.evaluation.retrieval import rerank, top_k
from vast.search.index import HNSW_EF_SEARCH, SearchIndex
from vast.tasks import Modality, ModalityGroup

MAX_QUERY_CHARS = 500


@dataclass
class Hit:
    id: str
    score: float  # matching probability when reranked, else the contrastive cosine
    contrastive: float
    path: str
    subtitle: str
    thumbnail: str


def exact_top(matrix: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [k] of the k best contrastive scores of `query` against every row, best first, and the scores."""
    scores = matrix @ query
    top = top_k(scores[None], k)[0]
    return top, scores[top]


def graph_top(graph, matrix: torch.Tensor, query: torch.Tensor, k: int,
              ef_search: int = HNSW_EF_SEARCH) -> tuple[torch.Tensor, torch.Tensor]:
    """As exact_top, with the rows found by the HNSW graph (approximate), scored exactly and sorted."""
    graph.hnsw.efSearch = max(ef_search, 2 * k)
    _, found = graph.search(query[None].numpy(), min(k, len(matrix)))
    rows = torch.as_tensor(found[0][found[0] >= 0])
    scores = matrix[rows] @ query
    order = scores.argsort(descending=True)
    return rows[order], scores[order]


def candidates(index: SearchIndex, group: str, query: torch.Tensor, k: int, use_faiss: bool | None = None):
    """(clip ids of the group, rows [<=k] of its k best clips by contrastive score, best first, their scores)."""
    ids, matrix = index.features(group)
    if not ids:
        raise DataError(f"{index.folder}: the index holds no clip for group '{group}'; embed some videos first")
    if use_faiss is None:
        use_faiss = index.uses_graph(group)
    if use_faiss:
        return (ids, *graph_top(index.graph(group), matrix, query, k))
    return (ids, *exact_top(matrix, query, k))


def decode_for_matching(model, index: SearchIndex, clip_ids: list[str], group: ModalityGroup):
    """The clips' frames and fbank as `vast embed` decoded them, for the matching head."""
    cfg, settings = model.model_cfg, index.settings
    paths = [index.clips[i].path for i in clip_ids]
    vision = audio = None
    rng = random.Random(0)
    if Modality.VISION in group.modalities:
        mean, std = media.vision_normalisation(cfg["vision_encoder_type"])
        spec = media.VisionSpec(format="video_rawvideo", sample_num=settings["frames"],
                                resolution=int(cfg["vision_resolution"]), mean=mean, std=std)
        vision = torch.stack([media.load_vision(p, spec, False, rng) for p in paths])
    if Modality.AUDIO in group.modalities:
        spec = media.AudioSpec(sample_num=settings["audio_clips"], melbins=int(cfg["audio_melbins"]),
                               target_length=int(cfg["audio_target_length"]))
        audio = torch.stack([media.load_audio(p, spec, False, rng) for p in paths])
    subtitles = [index.clips[i].subtitle for i in clip_ids] if Modality.SUBTITLE in group.modalities else None
    return vision, audio, subtitles


def search(model, index: SearchIndex, query: str, k: int = 10, group: str = "tvas", rerank_k: int = 50,
           use_faiss: bool | None = None) -> list[Hit]:
    """The k best clips of the index for `query` in `group`; `rerank_k` 0 keeps the contrastive order."""
    query = query.strip()
    if not query:
        raise DataError("the query is empty; give a few words that describe the clip")
    if len(query) > MAX_QUERY_CHARS:
        raise DataError(f"the query is {len(query)} characters long; at most {MAX_QUERY_CHARS}")
    parsed = ModalityGroup.parse(group)
    text = model.embed_text([query])[0].float().cpu()
    ids, pool, contrastive = candidates(index, parsed.name, text, max(k, rerank_k), use_faiss)
    # the evaluation's ranking restricted to the pool: every clip outside it scores below the pool
    final = contrastive[None].clone()
    if rerank_k > 0:
        chosen = pool[:rerank_k].tolist()
        vision, audio, subtitles = decode_for_matching(model, index, [ids[v] for v in chosen], parsed)
        probabilities = model.match([query], parsed, vision=vision, audio=audio, subtitles=subtitles)[0]
        final = rerank(final, ((0, j, p) for j, p in enumerate(probabilities.tolist())))
    order = final[0].argsort(descending=True)[:k].tolist()
    hits = []
    for j in order:
        clip = index.clips[ids[int(pool[j])]]
        hits.append(Hit(clip.id, round(float(final[0, j]), 6), round(float(contrastive[j]), 6), clip.path,
                        clip.subtitle, clip.thumbnail))
    return hits


def thumbnail_path(index: SearchIndex, clip_id: str) -> Path | None:
    clip = index.clips.get(clip_id)
    if clip is None or not clip.thumbnail:
        return None
    return index.folder / clip.thumbnail
