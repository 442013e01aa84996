"""python -m vast.data.prepare on tiny real videos: 16 kHz mono wavs the loader reads as it reads the
video, silent and corrupt videos reported, reruns skip, frame folders, the recipe check, bad input."""

import json
import random
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import torch

from vast.config import DATA_KEYS
from vast.data.media import load_waveform, read_frame_folder
from vast.data.prepare import main, prepare_media

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = {"tone": 2.0, "short": 1.0}  # videos with a sound track, and their length in seconds


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """tone.mp4 (2 s, stereo sine), short.mkv (1 s, mono sine), silent.mp4 (no audio stream), corrupt.mp4."""
    folder = tmp_path_factory.mktemp("prepare") / "videos"
    folder.mkdir()
    picture = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=10"]
    ffmpeg(*picture, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-ac", "2", "-t", DURATIONS["tone"],
           "-pix_fmt", "yuv420p", "-c:a", "aac", folder / "tone.mp4")
    ffmpeg(*picture, "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=22050", "-t", DURATIONS["short"],
           "-pix_fmt", "yuv420p", folder / "short.mkv")
    ffmpeg(*picture, "-t", 1, "-pix_fmt", "yuv420p", folder / "silent.mp4")
    (folder / "corrupt.mp4").write_bytes(random.Random(0).randbytes(4096))
    return folder


def statuses(report) -> dict[str, str]:
    return {result.video.stem: result.status for result in report.results}


def test_extracts_16k_mono_wavs_and_reports_silent_and_corrupt(videos, tmp_path):
    audios = tmp_path / "audios"
    (audios / ".partial").mkdir(parents=True)
    (audios / ".partial" / "tone.wav").write_bytes(b"RIFF half a file from a killed run")
    report = prepare_media(videos, audios, workers=2)
    assert statuses(report) == {"tone": "extracted", "short": "extracted", "silent": "no_audio", "corrupt": "failed"}
    assert "cannot be opened" in report.of("failed")[0].reason
    assert report.summary() == "4 video(s): 2 extracted, 0 skipped (already there), 1 no audio, 1 failed"
    assert sorted(p.name for p in audios.iterdir()) == ["short.wav", "tone.wav"]  # no silence, no .partial left
    for stem, seconds in DURATIONS.items():
        with wave.open(str(audios / f"{stem}.wav"), "rb") as handle:
            assert (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) == (16000, 1, 2)
            assert abs(handle.getnframes() / 16000 - seconds) < 0.1
    # The wav holds what the loader would have decoded from the video itself (up to 16-bit rounding).
    video_audio = load_waveform(videos / "tone.mp4")
    assert torch.allclose(load_waveform(audios / "tone.wav"), video_audio, atol=1e-4)
    assert video_audio.abs().max() > 0.05  # a real tone, not silence


def test_rerun_skips_every_output_and_reports_again(videos, tmp_path):
    audios = tmp_path / "audios"
    prepare_media(videos, audios, workers=2)
    mtimes = {path.name: path.stat().st_mtime_ns for path in audios.iterdir()}
    report = prepare_media(videos, audios, workers=1)
    assert statuses(report) == {"tone": "skipped", "short": "skipped", "silent": "no_audio", "corrupt": "failed"}
    assert {path.name: path.stat().st_mtime_ns for path in audios.iterdir()} == mtimes


def test_frames_mode_writes_folders_the_video_frame_loader_reads(videos, tmp_path):
    frames = tmp_path / "frames"
    report = prepare_media(videos, tmp_path / "audios", frames, fps=3, workers=2)
    assert statuses(report)["silent"] == "no_audio" and statuses(report)["corrupt"] == "failed"
    assert sorted(p.name for p in frames.iterdir()) == ["short", "silent", "tone"]
    assert len(list((frames / "tone").glob("*.jpg"))) == 6  # 2 s at 3 fps
    clip = read_frame_folder(frames / "tone", 4, False, random.Random(0))
    assert clip.shape == (4, 3, 48, 64)
    assert statuses(prepare_media(videos, tmp_path / "audios", frames, fps=3))["tone"] == "skipped"


def recipe(tmp_path, videos, audios, **entry_keys) -> Path:
    (tmp_path / "anno.json").write_text(json.dumps([{"video_id": stem, "desc": f"a clip called {stem}"}
                                                    for stem in ("tone", "short", "silent")]))
    entry = {"type": "annoindexed", "name": "prepared", "txt": str(tmp_path / "anno.json"), "vision": str(videos),
             "audio": str(audios), "vision_format": "video_rawvideo", "vision_sample_num": 2, "task": "ret%tva",
             "batch_size": 2, "n_workers": 0, **entry_keys}
    config = {"run_cfg": {"default": str(ROOT / "config/vast/default_run_cfg.json"), "mode": "testing",
                          "output_dir": str(tmp_path / "out")},
              "model_cfg": {"default": str(ROOT / "config/vast/demo/default_model_cfg.json")},
              "data_cfg": {"train": [], "val": [entry]}}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(config))
    return path


def test_config_runs_the_data_check(videos, tmp_path, capsys):
    assert DATA_KEYS["audio_missing"].choices == ("error", "zeros")  # the flag the no-audio hint names
    good = tmp_path / "videos"
    good.mkdir()
    for stem in ("tone.mp4", "short.mkv", "silent.mp4"):
        shutil.copy(videos / stem, good / stem)
    audios = tmp_path / "audios"
    accepting = recipe(tmp_path, good, audios, audio_missing="zeros")
    assert main(["--videos", str(good), "--audios", str(audios), "--workers", "2", "--config", str(accepting)]) == 0
    out = capsys.readouterr().out
    assert '"audio_missing": "zeros"' in out and f"  {good / 'silent.mp4'}" in out
    assert "checked prepared (val): 3 item(s) readable" in out and "check_data: ok" in out

    strict = recipe(tmp_path, good, audios)
    assert main(["--videos", str(good), "--audios", str(audios), "--config", str(strict)]) == 1
    assert "check_data: 1 problem(s)" in capsys.readouterr().out
    problems = json.loads((tmp_path / "out" / "log" / "check_data.json").read_text())["problems"]
    assert [p["file"] for p in problems] == [str(good / "silent.mp4")] and "no audio stream" in problems[0]["problem"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    result = subprocess.run([sys.executable, "-m", "vast.data.prepare", "--videos", str(missing),
                             "--audios", str(tmp_path / "audios")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {missing}: video folder not found; give --videos the folder that holds the videos"

    (tmp_path / "empty").mkdir()
    assert main(["--videos", str(tmp_path / "empty"), "--audios", str(tmp_path / "audios")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(tmp_path / "empty") in error and "no video files" in error
