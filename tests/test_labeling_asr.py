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
