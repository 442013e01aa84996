"""Labeling stages 1-2: sources cut into 5-30 s clips (fixed windows, scene cuts, or whole files) and
each clip's window decoded (frames on screen at the right times, its own audio)."""

import subprocess

import pytest
import torch

from vast.errors import ConfigError
from vast.labeling.clips import ClipDecoder, ClipSplitter, DecodeConfig, SplitConfig, split_spans


@pytest.fixture(scope="module")
def two_scenes(tmp_path_factory):
    """8 s of a test pattern, then 6 s of plain red, with a 440 Hz tone under the red part only."""
    path = tmp_path_factory.mktemp("sources") / "two_scenes.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:d=8",
                    "-f", "lavfi", "-i", "color=c=red:size=64x48:rate=10:d=6",
                    "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=8",
                    "-f", "lavfi", "-i", "sine=f=440:r=16000:d=6",
                    "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v];[2:a][3:a]concat=n=2:v=0:a=1[a]",
                    "-map", "[v]", "-map", "[a]", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)], check=True)
    return path


def test_split_spans_merge_short_pieces_and_split_long_ones():
    config = SplitConfig(mode="fixed", clip_seconds=10, min_seconds=5, max_seconds=30)
    assert split_spans(14.0, [10.0], config) == [(0.0, 14.0)]  # a 4 s tail joins the clip before it
    assert split_spans(25.0, [10.0, 20.0], config) == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    assert split_spans(70.0, [], config) == [(0.0, 23.333), (23.333, 46.667), (46.667, 70.0)]
    assert split_spans(3.0, [], config) == [(0.0, 3.0)]  # shorter than a clip: kept whole
    with pytest.raises(ConfigError, match="min_seconds"):
        SplitConfig(mode="fixed", clip_seconds=3, min_seconds=5)


def test_scene_cuts_fixed_windows_and_whole_files(two_scenes):
    record = {"source": str(two_scenes)}
    scenes = ClipSplitter(SplitConfig(mode="scenes"))([dict(record)])
    assert [(c["start"], c["end"]) for c in scenes] == [(0.0, 8.0), (8.0, 14.0)]
    assert scenes[1]["clip_id"] == "two_scenes_00008000_00014000" and scenes[1]["source"] == str(two_scenes)
    fixed = ClipSplitter(SplitConfig(mode="fixed", clip_seconds=7, min_seconds=5))([dict(record)])
    assert [(c["start"], c["end"]) for c in fixed] == [(0.0, 7.0), (7.0, 14.0)]
    whole = ClipSplitter()([dict(record)])
    assert [(c["clip_id"], c["start"], c["end"]) for c in whole] == [("two_scenes", 0.0, 14.0)]


def test_decoder_reads_each_clips_own_window(two_scenes):
    clips = ClipSplitter(SplitConfig(mode="scenes"))([{"source": str(two_scenes)}])
    decoded = ClipDecoder(DecodeConfig(frames=4))(clips)
    first, second = decoded[0]["frames"], decoded[1]["frames"]
    assert first.shape == second.shape == (4, 3, 48, 64) and first.dtype == torch.uint8
    red = second.float().mean(dim=(2, 3))  # [4, 3] mean colour of each frame
    assert bool((red[:, 0] > 200).all() and (red[:, 1:] < 60).all())  # every frame of scene 2 is red
    assert not bool((first.float().mean(dim=(2, 3))[:, 0] > 200).all())
    tone, silence = decoded[1]["waveform"], decoded[0]["waveform"]
    assert abs(len(tone) - 6 * 16000) < 1600 and abs(len(silence) - 8 * 16000) < 1600
    assert abs(tone).mean() > 0.05 and abs(silence).mean() < 0.005  # ffmpeg sine: amplitude 1/8


def test_unreadable_sources_and_clips_are_kept_with_their_error(tmp_path, two_scenes):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    clips = ClipSplitter(SplitConfig(mode="fixed", clip_seconds=7))([{"source": str(broken)},
                                                                    {"source": str(two_scenes)}])
    assert clips[0]["clip_id"] == "broken" and "broken.mp4" in clips[0]["error"]
    late = {"clip_id": "late", "source": str(two_scenes), "start": 20.0, "end": 25.0}
    decoded = ClipDecoder()(clips + [late])
    assert "frames" not in decoded[0] and all("frames" in c for c in decoded[1:3])
    assert "no video frames between 20.00 s and 25.00 s" in decoded[3]["error"]
