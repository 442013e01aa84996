"""The VAST model: encode each modality, pool contrastive features, fuse memories, score and decode.

Module names follow the released checkpoints (`vision_encoder.visual.*`, `audio_encoder.*`,
`multimodal_encoder.{bert,cls}.*`, `contra_head_{t,v,a,s}`, `contra_head_{va,vs,vas}`, `itm_head`,
`hidden_trans_{vision,audio,subtitle}_multimodal`, `{vision,audio}_frame_embedding`,
`{vision,audio,subtitle}_type_embeddings`, `contra_temp`). Modalities and groups are data: each
modality has one encoder, one pooling rule, one memory projection and one type embedding, and a
group is the ordered list of the modalities it conditions on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vast.config import complete_model_cfg
from vast.errors import ConfigError
from vast.models.audio import create_audio_encoder
from vast.models.generation import GenerationConfig, MaskSlotDecoder, generate
from vast.models.heads import ContrastiveHead, MatchHead
from vast.models.inference import InferenceMixin
from vast.models.text import create_text_encoder, load_tokenizer
from vast.models.towers import tokenizer_source, tower_configs
from vast.models.vision import create_vision_encoder
from vast.tasks import MODALITY_ORDER, Modality, ModalityGroup

logger = logging.getLogger(__name__)

MODALITY_NAMES = {Modality.VISION: "vision", Modality.AUDIO: "audio", Modality.SUBTITLE: "subtitle"}


@dataclass
class TextTokens:
    input_ids: torch.Tensor  # [N, L]
    attention_mask: torch.Tensor  # [N, L]

    def __getitem__(self, index) -> "TextTokens":
        return TextTokens(self.input_ids[index], self.attention_mask[index])


@dataclass
class MediaTokens:
    """Encoder outputs of a batch of clips, one entry per modality the task uses."""

    vision: torch.Tensor | None = None  # [B, F, 1+P, Dv]
    audio: torch.Tensor | None = None  # [B, C, P, Da]
    subtitle: torch.Tensor | None = None  # [B, Ls, D] BERT output over the subtitle
    subtitle_mask: torch.Tensor | None = None  # [B, Ls]

    def get(self, modality: Modality) -> torch.Tensor:
        value = getattr(self, MODALITY_NAMES[modality])
        if value is None:
            raise ConfigError(f"the batch has no {MODALITY_NAMES[modality]} input for this group")
        return value

    def __getitem__(self, index) -> "MediaTokens":
        return MediaTokens(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                              for f in fields(self)})


class VAST(InferenceMixin, nn.Module):
    """Vision-Audio-Subtitle-Text model with contrastive, matching and generation heads
    (inference API: `embed_text`, `embed`, `match`, `caption`, `answer`; see vast.models.inference)."""

    def __init__(self, model_cfg: Mapping):
        super().__init__()
        cfg = complete_model_cfg(model_cfg)
        self.model_cfg = cfg
        towers = tower_configs(cfg)
        self.towers = towers
        self.vision_encoder_config = towers["vision"].encoder
        self.vision_encoder = create_vision_encoder(towers["vision"].encoder, image_size=int(cfg["vision_resolution"]))
        self.audio_encoder = create_audio_encoder(towers["audio"].encoder)
        self.multimodal_encoder = create_text_encoder(towers["text"].encoder, add_cross_attention=True, with_lm_head=True)
        hidden = self.multimodal_encoder.bert.config.hidden_size
        self.hidden_size = hidden
        widths = {Modality.VISION: self.vision_encoder.width, Modality.AUDIO: self.audio_encoder.width,
                  Modality.SUBTITLE: hidden}
        self.modality_widths = widths
        contra_dim = int(cfg["contra_dim"])

        self.contra_head_t = ContrastiveHead(hidden, contra_dim)
        for modality in MODALITY_ORDER:
            setattr(self, f"contra_head_{modality.value}", ContrastiveHead(widths[modality], contra_dim))
        for letters in cfg["omni_contra_groups"]:
            group = ModalityGroup.parse("t" + letters)
            setattr(self, f"contra_head_{letters}", nn.Linear(sum(widths[m] for m in group.modalities), contra_dim))
        self.contra_temp = nn.Parameter(torch.tensor(0.07))
        self.itm_head = MatchHead(hidden)
        self.vision_frame_embedding = nn.Parameter(0.02 * torch.randn(1, int(cfg["max_vision_sample_num"]), hidden))
        self.audio_frame_embedding = nn.Parameter(0.02 * torch.randn(1, int(cfg["max_audio_sample_num"]), hidden))
        for modality, name in MODALITY_NAMES.items():
            setattr(self, f"hidden_trans_{name}_multimodal",
                    nn.Sequential(nn.Linear(widths[modality], hidden), nn.LayerNorm(hidden, eps=1e-12)))
            setattr(self, f"{name}_type_embeddings", nn.Parameter(0.02 * torch.randn(1, 1, hidden)))

        self.max_caption_len = int(cfg["max_caption_len"])
        self.max_subtitle_len = int(cfg["max_subtitle_len"])
        self.max_omni_caption_len = int(cfg["max_omni_caption_len"])
        self.max_question_len = int(cfg["max_question_len"])
        self.max_answer_len = int(cfg["max_answer_len"])
        self.mask_subtitle_padding = bool(cfg["mask_subtitle_padding"])
        # as the original: the vision frame embedding is added only for "adaptive" (audio clips always)
        self.vision_frame_embedding_on = cfg["frame_embedding_type"] == "adaptive"
        self.tokenizer = load_tokenizer(tokenizer_source(cfg))
        if towers["text"].checkpointing:
            for module in (self.vision_encoder, self.audio_encoder, self.multimodal_encoder.bert):
                module.set_grad_checkpointing(True)
        self._frozen = {m for m, name in ((Modality.VISION, "vision"), (Modality.AUDIO, "audio")) if towers[name].frozen}
        for modality in self._frozen:
            self.encoder_for(modality).requires_grad_(False)

    # --- bookkeeping -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.contra_temp.device

    def encoder_for(self, modality: Modality) -> nn.Module:
        return {Modality.VISION: self.vision_encoder, Modality.AUDIO: self.audio_encoder,
                Modality.SUBTITLE: self.multimodal_encoder.bert}[modality]

    def train(self, mode: bool = True):
        super().train(mode)
        for modality in self._frozen:  # frozen towers stay in eval mode (no dropout, fixed statistics)
            self.encoder_for(modality).eval()
        return self

    # --- text --------------------------------------------------------------------------------

    def tokenize(self, texts: list[str], max_len: int | None = None, pad_to_max: bool = False) -> TextTokens:
        """Token ids truncated to `max_len`, padded to the longest text (padding is masked, so the
        outputs are those of padding to `max_len`) or, with `pad_to_max`, to `max_len` itself."""
        encoded = self.tokenizer(list(texts), padding="max_length" if pad_to_max else "longest", truncation=True,
                                 max_length=max_len or self.max_caption_len, return_tensors="pt")
        return TextTokens(encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device))

    def caption_length(self, omni: bool) -> int:
        """Token limit of a caption: `max_omni_caption_len` for omni captions, else `max_caption_len`."""
        return self.max_omni_caption_len if omni else self.max_caption_len

    def tokenize_answers(self, answers: list[str]) -> TextTokens:
        """Answer tokens as the original trains them after the question: `[CLS] answer [SEP] [PAD]...`,
        max_answer_len + 1 long. The [CLS] is the start token that decoding is given, never a target."""
        return self.tokenize(answers, self.max_answer_len + 1, pad_to_max=True)

    def encode_text(self, tokens: TextTokens) -> torch.Tensor:
        """Bidirectional BERT over text alone: hidden states [N, L, D]."""
        return self.multimodal_encoder.bert(tokens.input_ids, tokens.attention_mask).last_hidden_state

    def text_features(self, tokens: TextTokens) -> torch.Tensor:
        """Contrastive text features [N, contra_dim], L2-normalised, from the [CLS] token."""
        return F.normalize(self.contra_head_t(self.encode_text(tokens)[:, 0]), dim=-1)

    # --- media -------------------------------------------------------------------------------

    def encode_media(self, modalities, vision=None, audio=None, subtitles=None) -> MediaTokens:
        """Run the encoders a group needs. vision [B,F,3,H,W], audio fbank [B,C,T,M], subtitles list[str]."""
        tokens = MediaTokens()
        if Modality.VISION in modalities:
            if vision is None:
                raise ConfigError("this group needs vision input but the batch has none")
            b, f = vision.shape[:2]
            with torch.set_grad_enabled(torch.is_grad_enabled() and Modality.VISION not in self._frozen):
                frames = self.vision_encoder(vision.flatten(0, 1))  # [B*F, 1+P, Dv]
            tokens.vision = frames.reshape(b, f, *frames.shape[1:])
        if Modality.AUDIO in modalities:
            if audio is None:
                raise ConfigError("this group needs audio input but the batch has none")
            b, c = audio.shape[:2]
            with torch.set_grad_enabled(torch.is_grad_enabled() and Modality.AUDIO not in self._frozen):
                clips = self.audio_encoder(audio.flatten(0, 1))  # [B*C, P, Da]
            tokens.audio = clips.reshape(b, c, *clips.shape[1:])
        if Modality.SUBTITLE in modalities:
            if subtitles is None:
                raise ConfigError("this group needs subtitles but the batch has none")
            # always max_subtitle_len tokens: the fusion memory holds them, padding included (as the original)
            subtitle_tokens = self.tokenize(subtitles, self.max_subtitle_len, pad_to_max=True)
            tokens.subtitle = self.encode_text(subtitle_tokens)
            tokens.subtitle_mask = subtitle_tokens.attention_mask
        return tokens

    def encode_batch(self, batch, groups) -> MediaTokens:
        """Encode the modalities that any of `groups` needs, once, for a collated batch."""
        modalities = {m for g in groups for m in g.modalities}
        return self.encode_media(modalities, batch.vision, batch.audio, batch.subtitles)

    def pooled(self, media: MediaTokens, modality: Modality) -> torch.Tensor:
        """Per-modality contrastive input: mean of frame [CLS] tokens; mean of audio tokens; subtitle [CLS]."""
        value = media.get(modality)
        if modality is Modality.VISION:
            return value[:, :, 0].mean(dim=1)
        if modality is Modality.AUDIO:
            return value.mean(dim=2).mean(dim=1)
        return value[:, 0]

    def condition_features(self, media: MediaTokens, group: ModalityGroup) -> torch.Tensor:
        """Contrastive features of a group's condition side [B, contra_dim], L2-normalised."""
        letters = "".join(m.value for m in group.modalities)
        head = getattr(self, f"contra_head_{letters}", None)
        if head is None:
            raise ConfigError(f"group '{group}' has no contrastive head; add '{letters}' to model_cfg.omni_contra_groups")
        pooled = torch.cat([self.pooled(media, m) for m in group.modalities], dim=-1)
        return F.normalize(head(pooled), dim=-1)

    def _modality_memory(self, media: MediaTokens, modality: Modality) -> torch.Tensor:
        name = MODALITY_NAMES[modality]
        projected = getattr(self, f"hidden_trans_{name}_multimodal")(media.get(modality))
        if modality is not Modality.SUBTITLE:
            if modality is Modality.AUDIO or self.vision_frame_embedding_on:
                # one learned embedding per frame / audio clip, resized (nearest) when the count differs
                table = getattr(self, f"{name}_frame_embedding")
                count = projected.shape[1]
                per_segment = F.interpolate(table.float().permute(0, 2, 1), count, mode="nearest").permute(0, 2, 1)
                projected = projected + per_segment.to(projected.dtype).unsqueeze(-2)  # [B, n, x, D]
            projected = projected.flatten(1, 2)  # segment-major: [B, n*x, D]
        return projected + getattr(self, f"{name}_type_embeddings")

    def fusion_memory(self, media: MediaTokens, group: ModalityGroup) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[vision frames | audio clips | subtitle tokens] as the group selects: memory [B, M, D] and,
        only when `mask_subtitle_padding` is on, a key mask [B, M] (the original attends to everything)."""
        parts = [self._modality_memory(media, m) for m in group.modalities]
        memory = torch.cat(parts, dim=1)
        if not (self.mask_subtitle_padding and Modality.SUBTITLE in group):
            return memory, None
        masks = [torch.ones(p.shape[:2], dtype=torch.long, device=memory.device) for p in parts[:-1]]
        return memory, torch.cat(masks + [media.subtitle_mask], dim=1)

    # --- fusion ------------------------------------------------------------------------------

    def fused_text(self, tokens: TextTokens, memory: torch.Tensor, memory_mask=None, **kwargs) -> torch.Tensor:
        return self.multimodal_encoder.bert(
            tokens.input_ids, tokens.attention_mask, encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask, **kwargs).last_hidden_state

    def match_logits(self, tokens: TextTokens, memory: torch.Tensor, memory_mask=None,
                     memory_index: torch.Tensor | None = None) -> torch.Tensor:
        """Match / no-match logits [N, 2] of each text with its memory (bidirectional + cross-attention);
        with `memory_index`, text i is paired with memory[memory_index[i]]."""
        return self.itm_head(self.fused_text(tokens, memory, memory_mask, memory_index=memory_index)[:, 0])

    # --- generation --------------------------------------------------------------------------

    def generate_text(self, media: MediaTokens, group: ModalityGroup, config: GenerationConfig,
                      questions: list[str] | None = None, video_index: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> list[list[str]]:
        """Captions of each clip (no `questions`), or answers to `questions`, question i being about
        clip `video_index[i]`. Returns, per caption / question, one text (greedy, beam) or
        `config.num_samples` texts (sampling)."""
        memory, memory_mask = self.fusion_memory(media, group)
        if questions is not None:
            index = torch.arange(len(questions), device=self.device) if video_index is None else video_index.to(self.device)
            memory = memory[index]
            memory_mask = None if memory_mask is None else memory_mask[index]
        cls = torch.full((memory.shape[0], 1), self.tokenizer.cls_token_id, dtype=torch.long, device=self.device)
        prefix = TextTokens(cls, torch.ones_like(cls))  # captions start from [CLS]
        question_length = None
        if questions is not None:
            # answers start from a [CLS] after the padded question, as they were trained (tokenize_answers)
            question = self.tokenize(questions, self.max_question_len, pad_to_max=True)
            question_length = question.input_ids.shape[1]
            prefix = TextTokens(torch.cat([question.input_ids, prefix.input_ids], dim=1),
                                torch.cat([question.attention_mask, prefix.attention_mask], dim=1))
        decoder = MaskSlotDecoder(self.multimodal_encoder, memory, memory_mask, prefix.input_ids, prefix.attention_mask,
                                  self.tokenizer.mask_token_id, bidirectional_prefix=questions is not None,
                                  use_cache=config.use_cache, bidirectional_length=question_length)
        sequences = generate(decoder, config, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id, generator)
        return [[self.decode(ids) for ids in per_input] for per_input in sequences]

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text as the original captions were written: special tokens dropped, word pieces
        joined and the spaces before punctuation and contractions removed ("is n ' t ." -> "isn't.").
        The clean-up is explicit because newer tokenizers no longer do it by default."""
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()
