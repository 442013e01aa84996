"""Text generation for captions and answers: greedy, beam search and top-k sampling, with a KV cache.

The VAST decoder predicts the next token from a `[MASK]` slot appended to the sequence so far (it is
trained as a causal masked language model), so a step reads the logits of that slot. With the cache,
a step feeds two tokens, the newest real token and a fresh `[MASK]` slot, and then forgets the slot's
keys: each new token costs one short decoder call instead of re-encoding the whole prefix (and the
fusion memory's cross-attention projections are computed once). `use_cache=False` re-encodes
everything every step, as the original release did; both give the same tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from vast.models.attention_masks import KVCache

STRATEGIES = ("greedy", "beam", "sample")


@dataclass(frozen=True)
class GenerationConfig:
    strategy: str = "greedy"
    max_len: int = 40  # generated tokens, [SEP] included
    beam_size: int = 3
    length_penalty: float = 0.6
    top_k: int = 5
    temperature: float = 1.0
    num_samples: int = 1  # sampling: sequences per input
    use_cache: bool = True

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"generation strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.max_len < 1 or self.beam_size < 1 or self.num_samples < 1:
            raise ValueError("max_len, beam_size and num_samples must be positive")


class MaskSlotDecoder:
    """Next-token logits of a BERT LM (`BertForMaskedLM` with cross-attention) over a fusion memory.

    The prefix (`[CLS]` for captions; `[CLS] question [SEP] [PAD].. [CLS]` for QA) is encoded once;
    when `bidirectional_prefix` is set its first `bidirectional_length` tokens (default: all of it) see
    each other (the QA question), and everything after them is causal (the whole sequence for
    captions). Rows can be reordered or repeated (beam search, sampling).
    """

    def __init__(self, lm, memory, memory_mask, prefix_ids, prefix_mask, mask_token_id: int,
                 bidirectional_prefix: bool = False, use_cache: bool = True, bidirectional_length: int | None = None):
        self.lm = lm
        self.memory, self.memory_mask = memory, memory_mask  # [B, M, D], [B, M] or None
        self.ids, self.attention = prefix_ids, prefix_mask  # [B, P]: the sequence so far
        self.prefix_length = prefix_ids.shape[1] if bidirectional_length is None else bidirectional_length
        self.mask_token_id = mask_token_id
        self.bidirectional_prefix = bidirectional_prefix
        self.use_cache = use_cache
        self.cache: KVCache | None = None

    def _mask_slot(self, rows: int) -> torch.Tensor:
        return torch.full((rows, 1), self.mask_token_id, dtype=self.ids.dtype, device=self.ids.device)

    def _mode(self) -> dict:
        if self.bidirectional_prefix:
            return {"mask_mode": "prefix", "prefix_lengths": self.prefix_length}
        return {"mask_mode": "causal"}

    def first_logits(self) -> torch.Tensor:
        """Logits [B, V] of the first generated token."""
        return self._logits(new_tokens=None)

    def next_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append `tokens` [B] to every row; logits [B, V] of the token after them."""
        return self._logits(new_tokens=tokens)

    def _logits(self, new_tokens: torch.Tensor | None) -> torch.Tensor:
        rows = self.ids.shape[0]
        if new_tokens is not None:
            self.ids = torch.cat([self.ids, new_tokens[:, None]], dim=1)
            self.attention = torch.cat([self.attention, torch.ones_like(new_tokens)[:, None]], dim=1)
        slot_mask = torch.ones(rows, 1, dtype=self.attention.dtype, device=self.attention.device)
        attention = torch.cat([self.attention, slot_mask], dim=1)
        if not self.use_cache:
            ids = torch.cat([self.ids, self._mask_slot(rows)], dim=1)
            hidden = self.lm(ids, attention, encoder_hidden_states=self.memory,
                             encoder_attention_mask=self.memory_mask, **self._mode()).last_hidden_state
        elif self.cache is None:  # first call: the whole prefix and the slot
            self.cache = KVCache(self.lm.config.num_hidden_layers)
            ids = torch.cat([self.ids, self._mask_slot(rows)], dim=1)
            hidden = self.lm(ids, attention, encoder_hidden_states=self.memory, encoder_attention_mask=self.memory_mask,
                             past_key_values=self.cache, **self._mode()).last_hidden_state
            self.cache.truncate(self.ids.shape[1])
            self.memory = self.memory_mask = None  # projected once into the cache; not needed again
        else:  # the newest real token and the slot; earlier positions come from the cache
            ids = torch.cat([self.ids[:, -1:], self._mask_slot(rows)], dim=1)
            hidden = self.lm(ids, attention, past_key_values=self.cache, mask_mode="causal").last_hidden_state
            self.cache.truncate(self.ids.shape[1])
        return self.lm.lm_logits(hidden[:, -1]).float()  # [B, V]

    def select(self, index: torch.Tensor) -> None:
        """Keep rows `index` (in that order); index may repeat rows."""
        self.ids, self.attention = self.ids[index], self.attention[index]
        if self.memory is not None:
            self.memory = self.memory[index]
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask[index]
        if self.cache is not None:
            self.cache.reorder(index)


def generate(decoder: MaskSlotDecoder, config: GenerationConfig, sep_token_id: int, pad_token_id: int,
             generator: torch.Generator | None = None) -> list[list[list[int]]]:
    """Token ids per input: a list of sequences each (one for greedy and beam, `num_samples` for
    sampling), without the prefix and without the final [SEP]."""
    if config.strategy == "beam" and config.beam_size > 1:
        return _beam_search(decoder, config, sep_token_id)
    batch = decoder.ids.shape[0]
    copies = config.num_samples if config.strategy == "sample" else 1
    if copies > 1:
        decoder.select(torch.arange(batch, device=decoder.ids.device).repeat_interleave(copies))
    sequences = _sample_or_greedy(decoder, config, sep_token_id, pad_token_id, generator)
    return [sequences[i * copies:(i + 1) * copies] for i in range(batch)]


def _pick(logits: torch.Tensor, config: GenerationConfig, generator) -> torch.Tensor:
    if config.strategy != "sample":
        return logits.argmax(dim=-1)
    top = logits.topk(min(config.top_k, logits.shape[-1]), dim=-1) if config.top_k > 0 else None
    candidates = top.values if top is not None else logits
    probs = torch.softmax(candidates / config.temperature, dim=-1)
    choice = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return top.indices.gather(1, choice[:, None]).squeeze(1) if top is not None else choice


def _sample_or_greedy(decoder, config, sep_token_id, pad_token_id, generator) -> list[list[int]]:
    rows = decoder.ids.shape[0]
    finished = torch.zeros(rows, dtype=torch.bool, device=decoder.ids.device)
    steps = []
    logits = decoder.first_logits()
    for step in range(config.max_len):
        tokens = _pick(logits, config, generator).masked_fill(finished, pad_token_id)
        steps.append(tokens)
        finished |= tokens == sep_token_id
        if bool(finished.all()) or step == config.max_len - 1:
            break
        logits = decoder.next_logits(tokens)
    out = torch.stack(steps, dim=1).tolist()
    return [_until_sep(row, sep_token_id) for row in out]


def _until_sep(tokens: list[int], sep_token_id: int) -> list[int]:
    return tokens[:tokens.index(sep_token_id)] if sep_token_id in tokens else tokens


def _length_penalty(length: int, alpha: float) -> float:
    """GNMT length normalisation: ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def _beam_search(decoder: MaskSlotDecoder, config: GenerationConfig, sep_token_id: int) -> list[list[list[int]]]:
    batch, k = decoder.ids.shape[0], config.beam_size
    device = decoder.ids.device
    decoder.select(torch.arange(batch, device=device).repeat_interleave(k))
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: only one may expand at the first step
    alive: list[list[int]] = [[] for _ in range(batch * k)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    logits = decoder.first_logits()
    for step in range(config.max_len):
        log_probs = torch.log_softmax(logits, dim=-1)  # [B*k, V]
        vocab = log_probs.shape[-1]
        candidates = (scores.reshape(-1, 1) + log_probs).reshape(batch, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # enough to refill k beams after [SEP]s
        top_scores, top_index = top_scores.tolist(), top_index.tolist()
        kept: list[tuple[int, int, float]] = []  # (row, token, score) of the next step's beams, k per input
        for b in range(batch):
            beams = []
            for score, flat in zip(top_scores[b], top_index[b]):
                if done[b] or len(beams) == k or score == float("-inf"):  # sorted: the rest are no better
                    break
                row, token, length = b * k + flat // vocab, flat % vocab, step + 1
                if token == sep_token_id or length == config.max_len:
                    ending = alive[row] if token == sep_token_id else alive[row] + [token]
                    finished[b].append((score / _length_penalty(length, config.length_penalty), ending))
                else:
                    beams.append((row, token, score))
            beams += [(b * k, sep_token_id, float("-inf"))] * (k - len(beams))  # dead beams fill the rest
            kept += beams
            if not done[b] and len(finished[b]) >= k:
                best_alive = max(score for _, _, score in beams)
                worst_kept = sorted(s for s, _ in finished[b])[-k]
                # the best a live beam can still reach is its score now, normalised at the longest length
                done[b] = best_alive == float("-inf") or \
                    best_alive / _length_penalty(config.max_len, config.length_penalty) <= worst_kept
        keep_rows, keep_tokens, keep_scores = (list(column) for column in zip(*kept))
        alive = [alive[r] + [t] for r, t in zip(keep_rows, keep_tokens)]
        scores = torch.tensor(keep_scores, device=device).reshape(batch, k)
        if all(done) or step == config.max_len - 1 or bool(torch.isinf(scores).all()):
            break
        decoder.select(torch.tensor(keep_rows, device=device))
        logits = decoder.next_logits(torch.tensor(keep_tokens, device=device))
    return [[max(finished[b], key=lambda item: item[0])[1] if finished[b] else []] for b in range(batch)]


def caption_generation_config(model_cfg: Mapping) -> GenerationConfig:
    """How captions are generated, for evaluation and inference alike: beam search with `beam_size`
    (greedy when 1); captioner mode samples `generate_nums` captions per clip."""
    common = {"max_len": int(model_cfg["max_caption_len"]), "use_cache": bool(model_cfg["generation_cache"])}
    if model_cfg["captioner_mode"]:
        return GenerationConfig(strategy="sample", num_samples=int(model_cfg["generate_nums"]),
                                top_k=int(model_cfg["sample_top_k"]),
                                temperature=float(model_cfg["sample_temperature"]), **common)
    beam = int(model_cfg["beam_size"])
    return GenerationConfig(strategy="beam" if beam > 1 else "greedy", beam_size=beam,
                            length_penalty=float(model_cfg["length_penalty"]), **common)


def answer_generation_config(model_cfg: Mapping) -> GenerationConfig:
    """How QA answers are generated: beam search with `beam_size_qa` (greedy when 1), at most
    `max_answer_len` tokens and the closing [SEP]."""
    beam = int(model_cfg["beam_size_qa"])
    return GenerationConfig(strategy="beam" if beam > 1 else "greedy", beam_size=beam,
                            max_len=int(model_cfg["max_answer_len"]) + 1,
                            length_penalty=float(model_cfg["length_penalty"]),
                            use_cache=bool(model_cfg["generation_cache"]))
