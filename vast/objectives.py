"""Training objectives and the task that owns them: contrastive (features from all ranks), matching
with hard negatives, captioning and QA as causal masked language modelling.

`VastTask(model, LossConfig)` is what a step calls (and what DDP or DeepSpeed wraps): it encodes the
batch's media once for every objective of its task and sums the weighted losses. The model only
encodes, pools, fuses and scores; it knows nothing of losses.

Each rank scores its own rows against every rank's columns; gathered tensors keep their autograd
path to the owning rank, so averaging the ranks' gradients (DDP) gives exactly the gradient of the
global-batch loss.

Under gradient accumulation the contrastive negatives can span the whole global batch (every rank,
every micro-step): `ContrastiveCache` holds the features of all micro-batches, computed once without
gradients; each micro-step then recomputes its own with gradients and scores the full global batch
against the cached rest (open_clip's scheme). The full loss is backwarded at every micro-step, each
pass carrying the gradient of its own micro-batch's features, so the sum over micro-steps is the
gradient of the global-batch loss. Matching negatives, captioning and QA stay within a micro-step.

Random choices of the objectives (hard and random negatives, subtitle swaps, token masking) come from
`vast.draws`: a fixed function of (seed, step, sample), so they do not depend on how the global batch
is split over processes and micro-steps, nor on whether the run was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

from vast import draws as purposes
from vast.draws import Draws, gumbel_argmax, sample_codes

import torch
import torch.nn.functional as F
from torch import nn

from vast.distributed import all_gather_objects, gather_no_grad, gather_with_grad, rank_and_world
from vast.errors import ConfigError
from vast.models.vast import TextTokens
from vast.tasks import Modality, TaskType


def _row_offset(rows: int, device) -> int:
    """Index of this rank's first row in the gathered batch."""
    rank, _ = rank_and_world()
    counts = gather_no_grad(torch.tensor([rows], device=device)).tolist()
    return int(sum(counts[:rank]))


def contrastive_loss(text_feats: torch.Tensor, cond_feats: torch.Tensor, temperature: torch.Tensor,
                     label_smoothing: float = 0.0, cached: "CachedFeatures | None" = None) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised text [n, d] and condition [n, d] features, row i of
    each being a positive pair; negatives are every other rank's rows too, and with `cached` (this
    micro-step's slot of a `ContrastiveCache`) every other micro-step's rows as well."""
    if cached is None:
        all_text, all_cond = gather_with_grad(text_feats), gather_with_grad(cond_feats)
        rows = _row_offset(text_feats.shape[0], text_feats.device) + torch.arange(
            text_feats.shape[0], device=text_feats.device)
        own_text, own_cond = text_feats, cond_feats
    else:
        all_text, all_cond = cached.columns(text_feats, cond_feats)
        rows = cached.own_rows
        own_text, own_cond = all_text[rows], all_cond[rows]
    text_to_cond = own_text @ all_cond.t() / temperature  # [n, N]
    cond_to_text = own_cond @ all_text.t() / temperature  # [n, N]
    return (F.cross_entropy(text_to_cond, rows, label_smoothing=label_smoothing)
            + F.cross_entropy(cond_to_text, rows, label_smoothing=label_smoothing)) / 2


def _sample_negatives(similarity: torch.Tensor, same_clip: torch.Tensor, temperature, uniforms: torch.Tensor,
                      random_rows: torch.Tensor | None = None) -> torch.Tensor | None:
    """One negative per row from another clip: a hard one, drawn in proportion to softmax(similarity)
    (the original), or, for the `random_rows`, a uniformly drawn one. `uniforms` [n, N] (one per
    row and column sample, see vast.draws) make the draw; the same pair always draws the same way."""
    if not bool((~same_clip).any(dim=1).all()):
        return None
    logits = (similarity.float() / temperature).masked_fill(same_clip, float("-inf"))
    if random_rows is not None:
        logits[random_rows] = torch.zeros_like(logits[random_rows]).masked_fill(same_clip[random_rows], float("-inf"))
    return gumbel_argmax(logits, uniforms)


def _pad_to_common_width(tokens: TextTokens) -> TextTokens:
    """Pad every rank's token rows to the widest rank's length (padding is masked)."""
    width = int(gather_no_grad(torch.tensor([tokens.input_ids.shape[1]], device=tokens.input_ids.device)).max())
    extra = width - tokens.input_ids.shape[1]
    if extra == 0:
        return tokens
    return TextTokens(F.pad(tokens.input_ids, (0, extra)), F.pad(tokens.attention_mask, (0, extra)))


def _subtitle_swaps(subtitles: list[str] | None, ratio: float, codes: torch.Tensor, draws: Draws) -> torch.Tensor | None:
    """For a `ratio` share of this rank's rows, another local row whose subtitle text differs (-1: none)."""
    if not subtitles or ratio <= 0:
        return None
    n = len(subtitles)
    device = codes.device
    different = torch.tensor([[a != b for b in subtitles] for a in subtitles], device=device)
    chosen = (draws.rows(codes, 1, purposes.SUBTITLE_SWAP)[:, 0] < ratio) & different.any(dim=1)
    if not bool(chosen.any()):
        return None
    logits = torch.zeros(n, n, device=device).masked_fill(~different, float("-inf"))
    donors = gumbel_argmax(logits[chosen], draws.pairs(codes[chosen], codes, purposes.SUBTITLE_DONOR))
    return torch.full((n,), -1, dtype=torch.long, device=device).index_put_((chosen.nonzero().squeeze(1),), donors)


def matching_loss(model, tokens, memory, memory_mask, text_feats, cond_feats, clip_codes, temperature,
                  draws: Draws, random_ratio: float = 0.0, subtitles: list[str] | None = None,
                  subtitle_swap_ratio: float = 0.0):
    """Binary match loss over positives, (text, hard-negative clip) and (hard-negative text, clip).

    With `subtitles` (the group fuses them, last in the memory) and `subtitle_swap_ratio` > 0, that
    share of the (text, negative clip) pairs instead pairs the text with its own clip whose subtitle
    tokens come from another clip of the batch with a different subtitle: a negative that only the
    subtitle tells apart, so matching must read the speech as well as the picture and the sound."""
    all_cond = gather_no_grad(cond_feats)
    all_text = gather_no_grad(text_feats)
    all_codes = gather_no_grad(clip_codes)
    same_clip = clip_codes[:, None] == all_codes[None, :]  # [n, N]
    with torch.no_grad():
        random_rows = None
        if random_ratio > 0:
            random_rows = draws.rows(clip_codes, 1, purposes.RANDOM_NEGATIVE)[:, 0] < random_ratio
        negative_clips = _sample_negatives(text_feats @ all_cond.t(), same_clip, temperature.detach(),
                                           draws.pairs(clip_codes, all_codes, purposes.NEGATIVE_CLIP), random_rows)
        negative_texts = _sample_negatives(cond_feats @ all_text.t(), same_clip, temperature.detach(),
                                           draws.pairs(clip_codes, all_codes, purposes.NEGATIVE_TEXT), random_rows)
    if negative_clips is None or negative_texts is None:
        return None  # every clip of the global batch is this clip: no negative exists
    all_memory = gather_with_grad(memory)  # [N, M, D]: each distinct clip memory once
    tokens = _pad_to_common_width(tokens)  # ranks pad their texts to different lengths
    all_ids = gather_no_grad(tokens.input_ids)
    all_attention = gather_no_grad(tokens.attention_mask)
    own_rows = _row_offset(memory.shape[0], memory.device) + torch.arange(memory.shape[0], device=memory.device)
    input_ids = torch.cat([tokens.input_ids, tokens.input_ids, all_ids[negative_texts]])
    attention = torch.cat([tokens.attention_mask, tokens.attention_mask, all_attention[negative_texts]])
    # pairs: (text, its clip), (text, hard-negative clip), (hard-negative text, clip); each distinct
    # memory is projected once however many pairs use it
    used, memory_index = torch.unique(torch.cat([own_rows, negative_clips, own_rows]), return_inverse=True)
    bank = all_memory[used]
    bank_mask = None if memory_mask is None else gather_no_grad(memory_mask)[used]
    n = tokens.input_ids.shape[0]
    donors = _subtitle_swaps(subtitles, subtitle_swap_ratio, clip_codes, draws)
    if donors is not None:
        swapped = (donors >= 0).nonzero().squeeze(1)
        width = model.max_subtitle_len  # the subtitle tokens close the memory

        def splice(rows):  # own clip's memory rows up to the subtitle, then the donor's subtitle rows
            return torch.cat([rows[swapped, :-width], rows[donors[swapped], -width:]], dim=1)

        bank = torch.cat([bank, splice(all_memory[own_rows])])
        if bank_mask is not None:
            bank_mask = torch.cat([bank_mask, splice(memory_mask)])
        memory_index = memory_index.clone()
        memory_index[n + swapped] = used.shape[0] + torch.arange(swapped.shape[0], device=memory.device)
    logits = model.match_logits(type(tokens)(input_ids, attention), bank, bank_mask, memory_index)
    labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long().to(logits.device)
    return F.cross_entropy(logits.float(), labels)


def retrieval_features(model, batch, media) -> dict:
    """group -> (text tokens, text features, condition features) of the batch's retrieval groups
    (groups with the same texts share one text encoding)."""
    text_cache: dict[tuple, tuple] = {}
    features = {}
    for group in batch.task.groups(TaskType.RETRIEVAL):
        texts = batch.texts_for(group)
        if texts is None:
            raise ConfigError(f"dataset {batch.dataset}: no captions for group {group} (task {batch.task})")
        key = (tuple(texts.texts), model.caption_length(texts.omni))
        if key not in text_cache:
            tokens = model.tokenize(texts.texts, key[1])
            text_cache[key] = (tokens, model.text_features(tokens))
        features[str(group)] = (*text_cache[key], model.condition_features(media, group))
    return features


def retrieval_losses(model, batch, media, weights: "LossConfig", context: "StepContext") -> dict[str, torch.Tensor]:
    codes = sample_codes(batch.ids, model.device)
    losses = {}
    features = retrieval_features(model, batch, media)
    for group in batch.task.groups(TaskType.RETRIEVAL):
        tokens, text_feats, cond_feats = features[str(group)]
        cached = context.cache.slot(str(group), context.micro) if context.cache is not None else None
        temperature = model.contra_temp if context.owns_temperature else model.contra_temp.detach()
        contra = contrastive_loss(text_feats, cond_feats, temperature, weights.contra_label_smoothing, cached)
        losses[f"contra_{group}"] = weights.contra * contra
        if weights.itm > 0:
            memory, memory_mask = model.fusion_memory(media, group)
            subtitles = batch.subtitles if Modality.SUBTITLE in group.modalities else None
            itm = matching_loss(model, tokens, memory, memory_mask, text_feats.detach(), cond_feats.detach(),
                                codes, model.contra_temp, context.draws, weights.itm_random_negative_ratio,
                                subtitles, weights.itm_subtitle_swap_ratio)
            if itm is not None:
                losses[f"itm_{group}"] = weights.itm * itm
    return losses


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, mask_prob: float, mask_token_id: int,
                vocab_size: int, first_random_id: int = 999, generator: torch.Generator | None = None,
                uniforms: torch.Tensor | None = None):
    """BERT-style masking of the `maskable` positions, vectorised: each is chosen with probability
    `mask_prob` (at least one per row that has any), and of the chosen 80% become [MASK], 10% a random
    token, 10% stay. The three draws per position come from `uniforms` [3, n, L] when given (see
    vast.draws), else from `generator`. Returns (masked ids, labels with -100 where nothing is predicted)."""
    device = input_ids.device
    if uniforms is None:
        uniforms = torch.rand((3, *input_ids.shape), device=device, generator=generator)
    draw, action, token_draw = uniforms
    chosen = (draw < mask_prob) & maskable
    # a row with nothing chosen predicts its maskable position with the smallest draw
    lowest = draw.masked_fill(~maskable, 2.0).argmin(dim=1)
    empty = ~chosen.any(dim=1) & maskable.any(dim=1)
    chosen[empty, lowest[empty]] = True
    labels = input_ids.masked_fill(~chosen, -100)
    masked = input_ids.masked_fill(chosen & (action < 0.8), mask_token_id)
    randomised = chosen & (action >= 0.8) & (action < 0.9)
    random_ids = first_random_id + (token_draw * (vocab_size - first_random_id)).long().clamp(max=vocab_size - first_random_id - 1)
    masked = torch.where(randomised, random_ids, masked)
    return masked, labels


def masked_lm_loss(model, input_ids, attention_mask, labels, memory, memory_mask, **mask_kwargs) -> torch.Tensor:
    """Cross-entropy of the chosen positions under a causal (or prefix) mask with cross-attention;
    the LM head runs on the chosen positions only."""
    hidden = model.fused_text(TextTokens(input_ids, attention_mask), memory, memory_mask, **mask_kwargs)
    chosen = labels != -100
    logits = model.multimodal_encoder.lm_logits(hidden[chosen])  # [n_chosen, V]
    return F.cross_entropy(logits.float(), labels[chosen])


def caption_losses(model, batch, media, weights: "LossConfig", context: "StepContext") -> dict[str, torch.Tensor]:
    """Captioning: each group's caption, a random 60% of its tokens masked, predicted under a causal
    mask with cross-attention to the group's fusion memory."""
    groups = batch.task.groups(TaskType.CAPTION)
    tokenizer = model.tokenizer
    losses = {}
    for group in groups:
        texts = batch.texts_for(group)
        if texts is None:
            raise ConfigError(f"dataset {batch.dataset}: no captions for group {group} (task {batch.task})")
        tokens = model.tokenize(texts.texts, model.caption_length(texts.omni))
        maskable = tokens.attention_mask.bool() & (tokens.input_ids != tokenizer.cls_token_id)
        codes = sample_codes([f"{i}\n{t}\n{group}" for i, t in zip(batch.ids, texts.texts)], model.device)
        masked, labels = mask_tokens(tokens.input_ids, maskable, weights.caption_mask_prob,
                                     tokenizer.mask_token_id, len(tokenizer),
                                     uniforms=context.draws.masking(codes, tokens.input_ids.shape[1], purposes.CAPTION_MASK))
        memory, memory_mask = model.fusion_memory(media, group)
        losses[f"caption_{group}"] = weights.caption * masked_lm_loss(
            model, masked, tokens.attention_mask, labels, memory, memory_mask, mask_mode="causal")
    return losses


def qa_losses(model, batch, media, weights: "LossConfig", context: "StepContext") -> dict[str, torch.Tensor]:
    """QA: [question | answer] with the question as a bidirectional prefix and the answer causal;
    answer tokens are masked as in captioning and predicted from the fusion memory."""
    if batch.questions is None:
        raise ConfigError(f"dataset {batch.dataset}: task {batch.task} needs question/answer annotations")
    groups = batch.task.groups(TaskType.QA)
    # questions padded to max_question_len, so answers start at the same position in training and at test
    questions = model.tokenize(batch.questions, model.max_question_len, pad_to_max=True)
    answers = model.tokenize_answers(batch.answers)
    input_ids = torch.cat([questions.input_ids, answers.input_ids], dim=1)
    attention = torch.cat([questions.attention_mask, answers.attention_mask], dim=1)
    tokenizer = model.tokenizer
    # the answer's own [CLS] is the start token decoding is given: never a target
    answer_targets = answers.attention_mask.bool() & (answers.input_ids != tokenizer.cls_token_id)
    maskable = torch.cat([torch.zeros_like(questions.attention_mask).bool(), answer_targets], dim=1)
    losses = {}
    video_index = torch.tensor(batch.question_video_index, device=model.device)
    questions_of = [f"{batch.ids[v]}\n{q}" for v, q in zip(batch.question_video_index, batch.questions)]
    for group in groups:
        codes = sample_codes([f"{q}\n{group}" for q in questions_of], model.device)
        masked, labels = mask_tokens(input_ids, maskable, weights.qa_mask_prob, tokenizer.mask_token_id,
                                     len(tokenizer), uniforms=context.draws.masking(codes, input_ids.shape[1], purposes.QA_MASK))
        memory, memory_mask = model.fusion_memory(media, group)
        losses[f"qa_{group}"] = weights.qa * masked_lm_loss(
            model, masked, attention, labels, memory, memory_mask, memory_index=video_index,
            mask_mode="prefix", prefix_lengths=questions.input_ids.shape[1])
    return losses


LOSSES_BY_TYPE = {TaskType.RETRIEVAL: retrieval_losses, TaskType.CAPTION: caption_losses, TaskType.QA: qa_losses}


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and the knobs of the objectives; field -> model_cfg key below, one default each
    (the schema's, which are the original's values)."""

    contra: float
    itm: float
    caption: float
    qa: float
    contra_label_smoothing: float
    itm_random_negative_ratio: float
    itm_subtitle_swap_ratio: float
    caption_mask_prob: float
    qa_mask_prob: float

    KEYS = {"contra": "contra_ratio", "itm": "itm_ratio", "caption": "caption_ratio", "qa": "qa_ratio"}

    @classmethod
    def from_model_cfg(cls, model_cfg: Mapping) -> "LossConfig":
        values = {}
        for field in fields(cls):
            key = cls.KEYS.get(field.name, field.name)
            values[field.name] = float(model_cfg[key])
        return cls(**values)


@dataclass
class CachedFeatures:
    """One retrieval group's slot in a `ContrastiveCache` for one micro-step, seen from this rank."""

    text: torch.Tensor  # [N, d] the whole global batch, without gradients
    cond: torch.Tensor  # [N, d]
    micro_rows: torch.Tensor  # positions of this micro-step's rows of every rank, in rank order
    own_rows: torch.Tensor  # positions of this rank's rows, all its micro-steps

    def columns(self, text_feats: torch.Tensor, cond_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch with this micro-step's rows (every rank's, with gradients) in place of their copies."""
        return (self.text.index_put((self.micro_rows,), gather_with_grad(text_feats)),
                self.cond.index_put((self.micro_rows,), gather_with_grad(cond_feats)))


class ContrastiveCache:
    """Contrastive features of every micro-batch of one optimizer step on every rank, without
    gradients, in global order: rank by rank, and within a rank micro-step by micro-step."""

    def __init__(self, features: dict[str, tuple[torch.Tensor, torch.Tensor]], counts: list[list[int]], rank: int):
        self.features = features  # group -> (text [N, d], cond [N, d])
        self.counts = counts  # counts[r][m]: rows of rank r's micro-step m
        self.rank = rank
        starts, position = {}, 0
        for r, per_micro in enumerate(counts):
            for m, n in enumerate(per_micro):
                starts[r, m] = position
                position += n
        self.starts = starts

    def _rows(self, rank: int, micro: int, device) -> torch.Tensor:
        start = self.starts[rank, micro]
        return torch.arange(start, start + self.counts[rank][micro], device=device)

    def slot(self, group: str, micro: int) -> CachedFeatures:
        text, cond = self.features[group]
        micro_rows = torch.cat([self._rows(r, micro, text.device) for r in range(len(self.counts))])
        own_rows = torch.cat([self._rows(self.rank, m, text.device) for m in range(len(self.counts[self.rank]))])
        return CachedFeatures(text, cond, micro_rows, own_rows)


@dataclass
class StepContext:
    """What the objectives of one micro-step share: the step's draws, and under accumulation with
    global negatives the contrastive cache; the temperature takes its gradient in one micro-step only."""

    draws: Draws
    cache: ContrastiveCache | None = None
    micro: int = 0
    owns_temperature: bool = True


class VastTask(nn.Module):
    """The training task: the model plus its objectives. One call encodes the batch's media once
    (every modality that any (type, group) of the task needs) and computes every loss from it."""

    def __init__(self, model: nn.Module, losses: LossConfig, seed: int = 0):
        super().__init__()
        self.model = model
        self.losses = losses
        self.seed = int(seed)

    def forward(self, batch, step: int = 0, micro: int = 0, micro_steps: int = 1,
                cache: ContrastiveCache | None = None) -> dict[str, torch.Tensor]:
        """Every weighted loss of the batch's task (micro-step `micro` of `micro_steps` of optimizer
        step `step`), and under "loss" what to backward: their sum, each divided by `micro_steps`
        except the contrastive losses computed over the whole global batch from `cache`."""
        for task_type in batch.task.types:
            if task_type not in LOSSES_BY_TYPE:
                raise ConfigError(f"dataset {batch.dataset}: training for task type '{task_type.value}' is not available yet")
        context = StepContext(Draws(self.seed, step), cache, micro,
                              owns_temperature=cache is None or micro == micro_steps - 1)
        media = self.model.encode_batch(batch, batch.task.groups())
        losses = {}
        for task_type in batch.task.types:
            losses.update(LOSSES_BY_TYPE[task_type](self.model, batch, media, self.losses, context))
        whole_batch = {name for name in losses if name.startswith("contra_")} if cache is not None else set()
        losses["loss"] = sum(value if name in whole_batch else value / micro_steps for name, value in losses.items())
        return losses

    @torch.no_grad()
    def contrastive_cache(self, batches: list) -> ContrastiveCache | None:
        """The features of all micro-batches of a step (collective over ranks); None without retrieval."""
        if TaskType.RETRIEVAL not in batches[0].task.types or self.losses.contra == 0:
            return None
        groups = batches[0].task.groups(TaskType.RETRIEVAL)
        local = [retrieval_features(self.model, b, self.model.encode_batch(b, groups)) for b in batches]
        counts = all_gather_objects([len(b.ids) for b in batches])
        features = {}
        for group in local[0]:
            text = torch.cat([f[group][1] for f in local])
            cond = torch.cat([f[group][2] for f in local])
            features[group] = (gather_no_grad(text), gather_no_grad(cond))
        return ContrastiveCache(features, counts, rank_and_world()[0])
