"""Vision and audio captions for the labeling pipeline: a VAST model in captioner mode, as a stage.

VAST-27M's captions come from two VAST models trained as captioners: the vision captioner reads
frames (`cap%tv`), the audio captioner reads the sound (`cap%ta`); each writes several captions per
clip by top-k sampling (k = 10 in the original's captioner configs). `VastCaptioner` loads such a
model once (a run folder or a checkpoint file, e.g. the released `vision_captioner/`) and captions
the clips `ClipDecoder` decoded: frames are resized and normalised as evaluation does, audio cut
into the middle fbank slice(s). Sampling draws from a generator seeded per batch, so a rerun of the
same batches (the executors' fixed clip-to-shard assignment) gives the same captions.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch

from vast.data import media
from vast.errors import ConfigError
from vast.labeling.stages import Resources, Stage
from vast.models.generation import GenerationConfig
from vast.tasks import Modality, ModalityGroup

logger = logging.getLogger(__name__)

OUTPUT_FIELD = {"tv": "vision_cap", "ta": "audio_cap"}


@dataclass(frozen=True)
class CaptionerConfig:
    model: str  # a run folder (log/hps.json + ckpt/) or one checkpoint file
    group: str = "tv"  # "tv": vision captions, "ta": audio captions
    num_captions: int = 3  # generate_nums
    top_k: int = 10
    temperature: float = 1.0
    max_len: int = 0  # 0: the model's max_caption_len
    audio_slices: int = 1
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0: leave torch's setting

    def __post_init__(self):
        if self.group not in OUTPUT_FIELD:
            raise ConfigError(f"captioner group {self.group!r}: use 'tv' (vision captions) or 'ta' (audio captions)")


class VastCaptioner(Stage):
    """Labeling stage: decoded clips (`frames` and/or `waveform`) -> `vision_cap` or `audio_cap` lists."""

    def __init__(self, config: CaptionerConfig):
        self.config = config
        self.group = ModalityGroup.parse(config.group)
        self.name = f"{OUTPUT_FIELD[config.group]}tions"
        self.resources = Resources(cpus=1.0, gpus=1.0 if torch.cuda.is_available() else 0.0, memory_gb=4.0)
        self.model = None

    def setup(self) -> None:
        import vast

        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.model = vast.load_model(self.config.model)
        if torch.cuda.is_available():
            self.model = self.model.cuda()
        cfg = self.model.model_cfg
        self.max_len = self.config.max_len or int(cfg["max_caption_len"])
        mean, std = media.vision_normalisation(cfg.get("vision_encoder_type", ""))
        self.frame_norm = (mean, std)
        self.resize = media.VisionTransform(int(cfg["vision_resolution"]), "none", training=False)
        self.audio_spec = media.AudioSpec(sample_num=self.config.audio_slices, melbins=int(cfg["audio_melbins"]),
                                          target_length=int(cfg["audio_target_length"]))
        logger.info("%s captioner: %s", self.config.group, self.config.model)

    def _audio_slices(self, record: dict) -> torch.Tensor:
        fbank = media.compute_fbank(torch.as_tensor(record["waveform"]), self.audio_spec.melbins)
        return media.slice_fbank(fbank, self.audio_spec.sample_num, self.audio_spec.target_length, False,
                                 random.Random(0))  # evaluation's middle slice(s): [C, T, M]

    def _inputs(self, records: list[dict]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        vision = audio = None
        device = self.model.device
        if Modality.VISION in self.group.modalities:
            frames = [self.resize(r["frames"], random.Random(0)) for r in records]  # uint8 [F, 3, R, R]
            vision = media.normalize_frames(torch.stack(frames).to(device), *self.frame_norm)
        if Modality.AUDIO in self.group.modalities:
            audio = torch.stack([self._audio_slices(r) for r in records]).to(device)
        return vision, audio

    def _usable(self, record: dict) -> bool:
        """A clip this captioner can read; one that it cannot keeps its record with the reason."""
        if record.get("error"):
            return False
        needed = "frames" if Modality.VISION in self.group.modalities else "waveform"
        if needed not in record:
            record["error"] = f"{record.get('source', record.get('clip_id'))}: no {needed} decoded for the captioner"
            return False
        if needed == "waveform" and len(record["waveform"]) < media.SAMPLE_RATE * 0.025:
            record["error"] = f"{record.get('source', record.get('clip_id'))}: audio too short to caption"
            return False
        return True

    @torch.no_grad()
    def __call__(self, batch: list[dict]) -> list[dict]:
        if self.model is None:
            self.setup()
        ready = [r for r in batch if self._usable(r)]
        if not ready:
            return batch
        vision, audio = self._inputs(ready)
        config = GenerationConfig(strategy="sample", num_samples=self.config.num_captions, top_k=self.config.top_k,
                                  temperature=self.config.temperature, max_len=self.max_len)
        generator = torch.Generator(device=self.model.device).manual_seed(self.config.seed)  # per batch
        media_tokens = self.model.encode_media(self.group.modalities, vision, audio, None)
        texts = self.model.generate_text(media_tokens, self.group, config, generator=generator)
        for record, captions in zip(ready, texts):
            record[OUTPUT_FIELD[self.config.group]] = captions
        return batch
