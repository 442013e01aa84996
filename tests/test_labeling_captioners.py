"""Labeling stage: VAST captioners (vision `tv`, audio `ta`) caption decoded clips by top-k sampling."""

import subprocess

import pytest
import torch

from vast.errors import ConfigError
from vast.labeling.captioners import CaptionerConfig, VastCaptioner
from vast.labeling.clips import ClipDecoder, ClipSplitter, DecodeConfig


@pytest.fixture(scope="module")
def decoded(demo_corpus, tmp_path_factory):
    silent = tmp_path_factory.mktemp("silent") / "silent.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:d=2",
                    "-pix_fmt", "yuv420p", str(silent)], check=True)
    sources = [{"source": str(demo_corpus / "videos" / f"demo_000{i}.mp4")} for i in range(3)]
    clips = ClipSplitter()(sources + [{"source": str(silent)}])
    return ClipDecoder(DecodeConfig(frames=4))(clips)


@pytest.mark.parametrize("group, field", [("tv", "vision_cap"), ("ta", "audio_cap")])
def test_captions_per_clip_are_sampled_and_reproducible(captioner_run, decoded, group, field):
    stage = VastCaptioner(CaptionerConfig(model=str(captioner_run), group=group, num_captions=2, max_len=6))
    stage.setup()
    records = [dict(r) for r in decoded]
    labeled = stage(records)
    good = [r for r in labeled if not r.get("error")]
    assert len(good) == 3 and all(len(r[field]) == 2 and all(isinstance(t, str) for t in r[field]) for r in good)
    again = stage([dict(r) for r in decoded])
    assert [r.get(field) for r in again] == [r.get(field) for r in labeled]  # same batch, same captions
    assert stage.name == f"{field}tions"


def test_a_clip_without_audio_keeps_its_reason(captioner_run, decoded):
    silent = next(r for r in decoded if r["clip_id"] == "silent")
    assert "no audio stream" in silent["error"] and "frames" not in silent
    stage = VastCaptioner(CaptionerConfig(model=str(captioner_run), group="ta", max_len=4))
    assert stage([dict(silent)])[0]["error"] == silent["error"]


def test_only_vision_and_audio_captioners():
    with pytest.raises(ConfigError, match="'tv'.*'ta'"):
        CaptionerConfig(model="x", group="tvas")
