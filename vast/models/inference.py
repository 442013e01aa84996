"""Tensor-level inference on a loaded VAST model: embed, match, caption, answer.

Mixed into `VAST`. Inputs follow the training batches: vision [B, F, 3, H, W] (normalised frames),
audio fbank [B, C, T, M] (BEATs-normalised slices), subtitles list[str] of length B. Every method
runs without gradients and returns CPU-friendly results (tensors on the model's device, or strings).
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import nullcontext

import torch

from vast.precision import autocast_context
from vast.models.generation import GenerationConfig, answer_generation_config, caption_generation_config
from vast.tasks import ModalityGroup

MATCH_CHUNK = 256  # (text, clip) pairs scored per forward pass


def _with_overrides(config: GenerationConfig, beam_size: int | None, max_len: int | None) -> GenerationConfig:
    if beam_size is not None:
        config = dataclasses.replace(config, strategy="beam" if beam_size > 1 else "greedy", beam_size=beam_size)
    if max_len is not None:
        config = dataclasses.replace(config, max_len=max_len)
    return config


def _group(group: str | ModalityGroup) -> ModalityGroup:
    return group if isinstance(group, ModalityGroup) else ModalityGroup.parse(group)


class InferenceMixin:
    # The run's precision settings (fp16, bf16) when loaded with `load_model(..., precision="run")`:
    # then every method runs under the autocast the run's evaluation used; None = float32.
    run_precision = None

    def _autocast(self):
        return nullcontext() if self.run_precision is None else autocast_context(self.run_precision, self.device)

    def load_clips(self, vision_paths=None, audio_paths=None, vision_sample_num: int = 8,
                   audio_sample_num: int = 1, vision_format: str = "video_rawvideo"):
        """Decode media files as evaluation does (middle frame of each segment, middle fbank slice):
        (vision [B, F, 3, R, R] or None, audio [B, C, T, M] or None). An audio path may be the video."""
        from vast.data import media

        rng = random.Random(0)  # evaluation sampling is deterministic; the generator is not used
        cfg = self.model_cfg
        vision = audio = None
        if vision_paths:
            mean, std = media.vision_normalisation(cfg["vision_encoder_type"])
            spec = media.VisionSpec(format=vision_format, sample_num=vision_sample_num,
                                    resolution=int(cfg["vision_resolution"]), mean=mean, std=std)
            vision = torch.stack([media.load_vision(p, spec, False, rng) for p in vision_paths])
        if audio_paths:
            spec = media.AudioSpec(sample_num=audio_sample_num, melbins=int(cfg["audio_melbins"]),
                                   target_length=int(cfg["audio_target_length"]))
            audio = torch.stack([media.load_audio(p, spec, False, rng) for p in audio_paths])
        return vision, audio

    def _media(self, group: ModalityGroup, vision, audio, subtitles):
        to = (lambda x: None if x is None else x.to(self.device))
        return self.encode_media(group.modalities, to(vision), to(audio), subtitles)

    @torch.no_grad()
    def embed_text(self, texts: list[str], max_len: int | None = None) -> torch.Tensor:
        """Contrastive text embeddings [N, contra_dim], L2-normalised."""
        with self._autocast():
            return self.text_features(self.tokenize(list(texts), max_len or self.max_caption_len)).float()

    @torch.no_grad()
    def embed(self, group, vision=None, audio=None, subtitles=None) -> torch.Tensor:
        """Contrastive embeddings [B, contra_dim] of clips for a group such as "tv" or "tvas"."""
        group = _group(group)
        with self._autocast():
            return self.condition_features(self._media(group, vision, audio, subtitles), group).float()

    @torch.no_grad()
    def match(self, texts: list[str], group, vision=None, audio=None, subtitles=None,
              max_len: int | None = None) -> torch.Tensor:
        """Matching-head probabilities [len(texts), B] that text i describes clip j."""
        group = _group(group)
        with self._autocast():
            memory, memory_mask = self.fusion_memory(self._media(group, vision, audio, subtitles), group)
            tokens = self.tokenize(list(texts), max_len or self.max_caption_len)
            n, b = len(texts), memory.shape[0]
            text_rows = torch.arange(n, device=self.device).repeat_interleave(b)
            clip_rows = torch.arange(b, device=self.device).repeat(n)
            scores = []
            for start in range(0, n * b, MATCH_CHUNK):
                rows = slice(start, start + MATCH_CHUNK)
                logits = self.match_logits(tokens[text_rows[rows]], memory, memory_mask, clip_rows[rows])
                scores.append(logits.float().softmax(dim=-1)[:, 1])
        return torch.cat(scores).reshape(n, b)

    @torch.no_grad()
    def caption(self, group, vision=None, audio=None, subtitles=None, beam_size: int | None = None,
                max_len: int | None = None) -> list[str]:
        """One caption per clip, generated as the model's evaluation generates them (`beam_size`,
        `max_caption_len`, `length_penalty` of its config; sampled in captioner mode); `beam_size`
        (1 = greedy) and `max_len` ([SEP] included) override them."""
        group = _group(group)
        config = _with_overrides(caption_generation_config(self.model_cfg), beam_size, max_len)
        with self._autocast():
            texts = self.generate_text(self._media(group, vision, audio, subtitles), group, config)
        return [t[0] for t in texts]

    @torch.no_grad()
    def answer(self, questions: list[str], group, vision=None, audio=None, subtitles=None,
               beam_size: int | None = None, max_len: int | None = None) -> list[str]:
        """One answer per question, decoded as the model's evaluation decodes them (`beam_size_qa`,
        `max_answer_len`); question i is about clip i (give the clip once per question)."""
        group = _group(group)
        config = _with_overrides(answer_generation_config(self.model_cfg), beam_size, max_len)
        index = torch.arange(len(questions), device=self.device)
        with self._autocast():
            media = self._media(group, vision, audio, subtitles)
            texts = self.generate_text(media, group, config, questions=list(questions), video_index=index)
        return [t[0] for t in texts]
