"""Whisper subtitles (real tiny.en through faster-whisper): the demo's spoken phrases are transcribed,
clips with only noise, music or silence get an empty subtitle, segments are timed, bad models are named."""

import json
import subprocess

import pytest

from vast.data import media
from vast.data.demo_corpus import PHRASES
from vast.errors import ConfigError
from vast.labeling.asr import AsrConfig, WhisperSubtitles, word_error_rate


@pytest.fixture(scope="module")
def asr():
    stage = WhisperSubtitles()
    stage.setup()
    return stage


def test_demo_phrases_are_transcribed(demo_corpus, asr):
    clips = json.loads((demo_corpus / "MANIFEST.json").read_text())["clips"]
    ids = sorted(clips)[:12]
    batch = [{"clip_id": clip, "waveform": media.load_waveform(demo_corpus / "videos" / f"{clip}.mp4").numpy()}
             for clip in ids]
    labeled = asr(batch)
    phrases = [PHRASES[clips[clip]["speech"]] for clip in ids]
    wer = word_error_rate(phrases, [r["subtitle"] for r in labeled])
    assert wer <= 0.15, list(zip(phrases, [r["subtitle"] for r in labeled]))
    for record in labeled:
        assert record["language"] == "en" and record["subtitle_segments"]
        for segment in record["subtitle_segments"]:
            assert 0 <= segment["start"] < segment["end"] <= 3.5 and segment["text"]


@pytest.mark.parametrize("source", ["anoisesrc=d=3:c=pink:a=0.3", "anullsrc=r=16000:cl=mono:d=3",
                                    "aevalsrc='0.3*sin(2*PI*(440+220*floor(mod(t*4,4)))*t)':d=4",
                                    "sine=f=220:d=3"])
def test_clips_without_speech_get_an_empty_subtitle(tmp_path, asr, source):
    path = tmp_path / "no_speech.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", source, "-t", "3", "-ar", "16000",
                    "-ac", "1", str(path)], check=True)
    subtitle = asr.transcribe(media.load_waveform(path).numpy())
    assert subtitle.text == "" and subtitle.segments == [] and subtitle.language == ""


def test_whisper_signals_alone_drop_hallucinations_without_vad(tmp_path):
    """With voice-activity filtering off, the no-speech probability still drops tiny.en's ' You'."""
    path = tmp_path / "noise.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "anoisesrc=d=3:c=pink:a=0.3",
                    "-ar", "16000", "-ac", "1", str(path)], check=True)
    stage = WhisperSubtitles(AsrConfig(vad=False))
    assert stage.transcribe(media.load_waveform(path).numpy()).text == ""


def test_a_folder_without_a_model_is_named(tmp_path):
    stage = WhisperSubtitles(AsrConfig(model=str(tmp_path)))
    with pytest.raises(ConfigError, match=f"{tmp_path}.*model.bin"):
        stage.setup()


def test_word_error_rate():
    assert word_error_rate(["Close the door."], ["close the door"]) == 0
    assert word_error_rate(["close the door", "wash the car"], ["close my door", "wash the car now"]) == 2 / 6


@pytest.fixture(scope="module")
def openai_checkpoint(tmp_path_factory):
    """A small openai-whisper checkpoint in the package's own file layout ({"dims", "model_state_dict"}),
    randomly initialised: no real openai-whisper weights can be had offline here."""
    import dataclasses

    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51864, n_text_ctx=32, n_text_state=64, n_text_head=2, n_text_layer=1)
    path = tmp_path_factory.mktemp("openai_whisper") / "tiny-random.en.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, path)
    return path


def test_openai_whisper_checkpoints_load_offline_and_keep_the_guards(openai_checkpoint, demo_corpus, tmp_path):
    from vast.labeling.asr import OpenAIWhisperBackend

    stage = WhisperSubtitles(AsrConfig(model=str(openai_checkpoint), beam_size=1))
    stage.setup()
    assert isinstance(stage.model, OpenAIWhisperBackend)
    speech = media.load_waveform(demo_corpus / "videos" / "demo_0000.mp4").numpy()
    segments, language = stage.model.transcribe(speech)  # random weights: segments, but no real words
    assert segments and language == "en" and all(s.end > s.start >= 0 for s in segments)
    first = stage.transcribe(speech)
    assert first == stage.transcribe(speech)  # the temperature fallback is seeded per clip
    # a random model's windows fail Whisper's own signals: the guards drop them, as they drop hallucinations
    assert first.text == "" and not any(stage._is_speech(s) for s in segments)
    path = tmp_path / "noise.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "anoisesrc=d=3:c=pink:a=0.3:seed=7",
                    "-ar", "16000", "-ac", "1", str(path)], check=True)
    assert stage.model.transcribe(media.load_waveform(path).numpy()) == ([], "")  # VAD: nobody speaks


def test_a_file_that_is_no_openai_whisper_checkpoint_is_named(tmp_path):
    import torch

    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ConfigError, match=f"{path}: not an openai-whisper checkpoint"):
        WhisperSubtitles(AsrConfig(model=str(path))).setup()
