"""Bad and long media inputs, on real files made by ffmpeg in the test.

Every bad input must end in one ``MediaError`` whose message names the file and says what is wrong;
long videos must decode only around the sampled frames, returning exactly the frames that decoding
from the start would.
"""

import random
import subprocess
import time
import wave

import numpy as np
import pytest
import torch

from vast.data import media, video
from vast.errors import MediaError

WIDTH, HEIGHT = 64, 48
VISION = media.VisionSpec(format="video_rawvideo", sample_num=4, resolution=32)
AUDIO = media.AudioSpec(sample_num=1, melbins=64, target_length=1024)
GRAY_FRAMES = 30
GRAY_STEP = 8  # frame i of a gray clip is solid gray 8 * i, so a decoded frame's mean names its index


def ffmpeg(*arguments):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *arguments], check=True, capture_output=True)


def pattern_video(path, seconds, rate, *codec_arguments):
    """A test-pattern video whose every frame differs (testsrc draws a moving pattern and a counter)."""
    pattern = f"testsrc=size={WIDTH}x{HEIGHT}:rate={rate}:duration={seconds}"
    ffmpeg("-f", "lavfi", "-i", pattern, *codec_arguments, str(path))
    return path


def gray_clip(path, *codec_arguments):
    """GRAY_FRAMES lossless solid-gray frames at 10 fps with a tone, frame i at gray level GRAY_STEP * i."""
    levels = np.repeat(np.arange(GRAY_FRAMES, dtype=np.uint8) * GRAY_STEP, WIDTH * HEIGHT)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{WIDTH}x{HEIGHT}", "-r", "10"]
        + ["-i", "-", "-f", "lavfi", "-i", f"sine=frequency=440:duration={GRAY_FRAMES / 10}"]
        + ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-c:a", "aac", *codec_arguments]
        + ["-shortest", str(path)],
        input=levels.tobytes(),
        check=True,
        capture_output=True,
    )
    return path


def gray_indices(frames: torch.Tensor) -> list[int]:
    levels = frames.float().mean(dim=(1, 2, 3)).tolist()
    indices = [round(level / GRAY_STEP) for level in levels]
    assert all(abs(level - GRAY_STEP * index) <= 3 for level, index in zip(levels, indices)), levels
    return indices


def write_wav(path, num_samples: int, sample_rate: int = 16000):
    noise = np.random.default_rng(0).normal(0, 3000, num_samples).clip(-32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav_file:
        wav_file.setnchannels(1)
        wav_file.setsampwidth(2)
        wav_file.setframerate(sample_rate)
        wav_file.writeframes(noise.tobytes())
    return path


def truncated(source, fraction: float, destination):
    """Write the first ``fraction`` of ``source``'s bytes to ``destination``."""
    data = source.read_bytes()
    destination.write_bytes(data[: int(len(data) * fraction)])
    return destination


def as_sources(path):
    """The file on disk and the same bytes held in memory under a shard-member name."""
    return [path, media.MediaBytes(f"shard-0001.tar/{path.name}", path.read_bytes())]


def load_vision(source, training=False):
    return media.load_vision(source, VISION, training, random.Random(0))


def load_audio(source, training=False):
    return media.load_audio(source, AUDIO, training, random.Random(0))


def assert_media_error(load, source, *reason_words):
    """``load(source)`` raises MediaError; its message names the file and holds every reason word."""
    with pytest.raises(MediaError) as caught:
        load(source)
    message = str(caught.value)
    assert message.startswith(f"{source}: "), message
    for word in reason_words:
        assert word in message, message
    return message


@pytest.fixture(scope="module")
def gray_mp4(tmp_path_factory):
    return gray_clip(tmp_path_factory.mktemp("gray") / "gray.mp4")


# --- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("load", [load_vision, load_audio])
def test_zero_byte_file_is_reported_empty(tmp_path, load):
    path = tmp_path / "empty.mp4"
    path.touch()
    for source in [path, media.MediaBytes("shard-0001.tar/empty.mp4", b"")]:
        assert_media_error(load, source, "empty", "0 bytes")


@pytest.mark.parametrize("load", [load_vision, load_audio])
def test_truncated_mp4_with_moov_at_the_end_cannot_be_opened(gray_mp4, tmp_path, load):
    # Plain ffmpeg MP4 output writes its index (moov) last, so the first half holds no index at all.
    for source in as_sources(truncated(gray_mp4, 0.5, tmp_path / "half.mp4")):
        assert_media_error(load, source, "cannot be opened", "corrupt, truncated")


def test_truncated_faststart_mp4_samples_among_the_frames_that_decode(tmp_path):
    """The index at the front still promises every frame; decoding stops where the data ends and the
    sample is redrawn among the frames that did decode, so the caller gets a full, valid clip."""
    cut = truncated(gray_clip(tmp_path / "fast.mp4", "-movflags", "+faststart"), 0.6, tmp_path / "fast_60.mp4")
    for source in as_sources(cut):
        frames = media.read_video_frames(source, GRAY_FRAMES, False, random.Random(0))
        indices = gray_indices(frames)
        decodable = len(set(indices))
        assert 0 < decodable < GRAY_FRAMES
        assert indices == list(range(decodable)) + [decodable - 1] * (GRAY_FRAMES - decodable)
        assert load_vision(source).shape == (4, 3, 32, 32)
        assert load_vision(source, training=True).shape == (4, 3, 32, 32)
        # The audio before the cut is kept too (a warning is logged), padded to one fbank window.
        assert load_audio(source).shape == (1, 1024, 64)


def test_mp4_cut_inside_its_header_names_no_streams(tmp_path):
    # 100 bytes of a faststart MP4 end inside its index: it opens but lists no streams, and telling the
    # user it "has no audio stream; drop audio from this task" would send them the wrong way.
    fast = gray_clip(tmp_path / "fast.mp4", "-movflags", "+faststart")
    for source in as_sources(truncated(fast, 100 / fast.stat().st_size, tmp_path / "header_only.mp4")):
        for load in (load_vision, load_audio):
            assert_media_error(load, source, "no audio or video streams", "truncated")


@pytest.mark.parametrize("load", [load_vision, load_audio])
def test_text_file_named_mp4_is_not_media(tmp_path, load):
    path = tmp_path / "x.mp4"
    path.write_text("this is a text file, not a video\n" * 20)
    for source in as_sources(path):
        assert_media_error(load, source, "cannot be opened as media", "not audio/video")


def test_video_without_audio_stream(tmp_path):
    path = pattern_video(tmp_path / "silent.mp4", 2, 10, "-c:v", "libx264", "-an")
    for source in as_sources(path):
        assert load_vision(source).shape == (4, 3, 32, 32)
        assert_media_error(load_audio, source, "has no audio stream")


@pytest.mark.parametrize("training", [False, True])
def test_one_frame_video_repeats_its_frame(tmp_path, training):
    path = pattern_video(tmp_path / "one.mp4", 1, 10, "-frames:v", "1", "-c:v", "libx264")
    clip = load_vision(path, training)
    assert clip.shape == (4, 3, 32, 32)
    assert all(torch.equal(clip[0], frame) for frame in clip[1:])


def test_non_utf8_metadata_does_not_stop_decoding(tmp_path):
    # A Latin-1 title (common in old AVI/MKV files); PyAV's strict tag decoding used to raise UnicodeDecodeError.
    path = tmp_path / "latin1.mkv"
    subprocess.run(
        [b"ffmpeg", b"-v", b"error", b"-y", b"-f", b"lavfi", b"-i", b"testsrc=size=64x48:rate=10:duration=1"]
        + [b"-metadata", b"title=caf\xe9", b"-c:v", b"libx264", str(path).encode()],
        check=True,
        capture_output=True,
    )
    assert load_vision(path).shape == (4, 3, 32, 32)


def test_half_second_audio_is_padded_to_one_window(tmp_path):
    path = write_wav(tmp_path / "half_second.wav", 8000)
    for source in as_sources(path):
        fbank = load_audio(source)
        assert fbank.shape == (1, 1024, 64)
        rows = 1 + (8000 - 400) // 160  # 25 ms windows every 10 ms
        assert fbank[0, :rows].abs().sum(dim=1).min() > 0
        assert not fbank[0, rows:].any()  # silence padding


def test_audio_shorter_than_one_window_is_too_short(tmp_path):
    path = write_wav(tmp_path / "blip.wav", 100)
    for source in as_sources(path):
        assert_media_error(load_audio, source, "too short", "100 samples")


# --- long videos: seek to the sampled frames ---------------------------------------------------

LONG_VIDEOS = {
    # 120 s at 10 fps, a keyframe every 2 s. x264's default preset uses B-frames, which reorder frames.
    "bframes.mp4": ["-c:v", "libx264", "-g", "20", "-pix_fmt", "yuv420p"],
    "faststart.mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-g", "20", "-movflags", "+faststart"],
    "x264.mkv": ["-c:v", "libx264", "-g", "20"],
    "vp8.webm": ["-c:v", "libvpx", "-g", "20"],
    # AVI stores no presentation times: its start_time is one frame before the first shown frame.
    "mpeg4_bframes.avi": ["-c:v", "mpeg4", "-bf", "2", "-g", "20"],
}
LONG_FRAMES = 1200  # 4 evaluation samples lie 300 frames apart, past SEEK_MIN_GAP


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    return {name: pattern_video(folder / name, LONG_FRAMES // 10, 10, *codec) for name, codec in LONG_VIDEOS.items()}


def sequential_frames(source, wanted):
    """The wanted frames (rgb24 [H, W, 3] by index) decoded from the start, as short clips always are."""
    kept, decoded = video._decode_video_frames(source, wanted)
    assert decoded == max(wanted) + 1
    return kept


def as_clip(kept, wanted) -> torch.Tensor:
    """Frames by index -> uint8 [F, 3, H, W] in ``wanted`` order, as read_video_frames returns them."""
    return torch.from_numpy(np.stack([kept[index] for index in wanted])).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", LONG_VIDEOS)
def test_seek_path_returns_the_sequential_paths_frames(long_videos, name):
    path = long_videos[name]
    frame_count = video._count_video_frames(path)
    assert frame_count == LONG_FRAMES
    selections = [
        # The start, neighbours, far jumps and the very last frame. In the AVI, 307 sits two frames after a
        # keyframe that its decode-time index files under 306, so a seek to exactly 307 would land past it.
        [0, 1, 307, 308, 620, 1199],
        [5, 400, 401, 402, 1198],
        media.segment_indices(frame_count, 4, False, random.Random(0)),
        media.segment_indices(frame_count, 2, True, random.Random(1)),
        media.segment_indices(frame_count, 3, True, random.Random(2)),
    ]
    for wanted in selections:
        assert video._needs_seeking(wanted)
        seeked, decoded = video._seek_video_frames(path, wanted, frame_count)
        expected = sequential_frames(path, wanted)
        assert decoded < max(wanted)
        assert seeked.keys() == expected.keys()
        for index in wanted:
            assert np.array_equal(seeked[index], expected[index]), (name, wanted, index)
    # Neighbouring frames differ, so an off-by-one frame would have failed the comparison above.
    neighbours = sequential_frames(path, [299, 300])
    assert not np.array_equal(neighbours[299], neighbours[300])


@pytest.mark.parametrize("training", [False, True])
def test_read_video_frames_on_a_long_video_matches_sequential_decoding(long_videos, training):
    path = long_videos["bframes.mp4"]
    for source in as_sources(path):
        frames = media.read_video_frames(source, 4, training, random.Random(5))
        wanted = media.segment_indices(LONG_FRAMES, 4, training, random.Random(5))
        assert video._needs_seeking(wanted)
        assert torch.equal(frames, as_clip(sequential_frames(source, wanted), wanted))


def test_clips_up_to_the_seek_gap_are_always_decoded_sequentially():
    # Short clips keep the sequential path, so their frames are bit-identical to before seeking existed.
    for sample_num in range(1, 17):
        for training, seed in [(False, 0), *((True, seed) for seed in range(5))]:
            wanted = media.segment_indices(video.SEEK_MIN_GAP, sample_num, training, random.Random(seed))
            assert not video._needs_seeking(wanted)
    assert video._needs_seeking([video.SEEK_MIN_GAP])  # 251 frames past the start


VARIABLE_RATE = {
    # 600 frames 0.1 s apart, but frames 300 on shown 3 s later: every frame sits on the 10 fps grid and
    # steps one grid point at a time except across the hole, which the last frame's grid index reveals.
    "hole": "setpts='(N+30*gte(N,300))/10/TB'",
    # The first 300 frames 0.1 s apart, the rest 0.3 s apart.
    "slowdown": "setpts='if(lt(N,300),N,300+(N-300)*3)/10/TB'",
}


@pytest.fixture(scope="module")
def variable_rate_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vfr")
    videos = {
        f"{name}.{extension}": pattern_video(
            folder / f"{name}.{extension}", 60, 10, "-vf", timing, "-fps_mode", "vfr", "-c:v", "libx264", "-g", "20"
        )
        for name, timing in VARIABLE_RATE.items()
        for extension in ("mp4", "mkv")
    }
    # A raw H.264 stream has no timestamps and no duration.
    videos["raw.h264"] = pattern_video(folder / "raw.h264", 60, 10, "-c:v", "libx264", "-g", "20", "-f", "h264")
    return videos


@pytest.mark.parametrize("name", ["hole.mp4", "hole.mkv", "slowdown.mp4", "slowdown.mkv", "raw.h264"])
def test_variable_or_unknown_frame_rate_falls_back_to_sequential(variable_rate_videos, name):
    path = variable_rate_videos[name]
    frame_count = video._count_video_frames(path)
    assert frame_count == 600
    wanted = media.segment_indices(frame_count, 2, False, random.Random(0))  # 300 frames apart
    assert video._needs_seeking(wanted)
    assert video._seek_video_frames(path, wanted, frame_count) is None
    frames = media.read_video_frames(path, 2, False, random.Random(0))
    assert torch.equal(frames, as_clip(sequential_frames(path, wanted), wanted))


def test_a_gap_made_up_later_is_caught_while_decoding(tmp_path):
    """Frames 306-399 shown 0.5 s late, frames 400-409 twice as fast to catch up: the last frame is back
    on its grid point, so only the checks made while decoding can see that timestamps and counts differ."""
    timing = "settb=1/1000,setpts='if(lte(N,305),N,if(lt(N,400),N+5,if(lt(N,410),405+(N-400)/2,N)))/10/TB'"
    vfr = ["-vf", timing, "-fps_mode", "passthrough", "-r", "20", "-c:v", "libx264", "-g", "20"]
    path = pattern_video(tmp_path / "gap.mp4", 60, 10, *vfr)
    frame_count = video._count_video_frames(path)
    # The seek for 315 lands on the keyframe at 300; frame 306 then steps from grid point 305 to 311.
    assert video._seek_video_frames(path, [0, 315], frame_count) is None
    # Decoding into the catch-up meets frames between grid points.
    assert video._seek_video_frames(path, [0, 407], frame_count) is None
    # From a keyframe past the catch-up, timestamps name frames correctly again.
    seeked, _ = video._seek_video_frames(path, [0, 449], frame_count)
    assert torch.equal(as_clip(seeked, [0, 449]), as_clip(sequential_frames(path, [0, 449]), [0, 449]))


def test_truncated_long_video_samples_among_the_frames_that_decode(long_videos, tmp_path):
    # The index promises every frame; seeking past the cut fails and the sequential path redraws the sample.
    cut = truncated(long_videos["faststart.mp4"], 0.6, tmp_path / "cut.mp4")
    assert video._count_video_frames(cut) == LONG_FRAMES
    wanted = media.segment_indices(LONG_FRAMES, 4, False, random.Random(0))
    assert video._seek_video_frames(cut, wanted, LONG_FRAMES) is None
    _, decodable = video._decode_video_frames(cut, [LONG_FRAMES - 1])
    assert 0 < decodable < LONG_FRAMES
    redrawn = media.segment_indices(decodable, 4, False, random.Random(0))
    frames = media.read_video_frames(cut, 4, False, random.Random(0))
    assert torch.equal(frames, as_clip(sequential_frames(cut, redrawn), redrawn))


@pytest.fixture(scope="module")
def half_hour_video(tmp_path_factory):
    # 30 minutes at 5 fps (9,000 frames), a keyframe every 10 s; ultrafast encodes it in about a second.
    path = tmp_path_factory.mktemp("half_hour") / "half_hour.mp4"
    return pattern_video(path, 1800, 5, "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p")


def best_time(function, repeats=3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def test_half_hour_video_decodes_only_around_the_sampled_frames(half_hour_video):
    frame_count = video._count_video_frames(half_hour_video)
    assert frame_count == 9000
    wanted = media.segment_indices(frame_count, 4, False, random.Random(0))
    seeked, decoded = video._seek_video_frames(half_hour_video, wanted, frame_count)
    # Each seek decodes from a keyframe at most 50 + REORDER_MARGIN frames before its target.
    assert decoded <= len(wanted) * (50 + video.REORDER_MARGIN + 1) + 1
    assert torch.equal(as_clip(seeked, wanted), as_clip(sequential_frames(half_hour_video, wanted), wanted))

    read_seconds = best_time(lambda: media.read_video_frames(half_hour_video, 4, False, random.Random(0)))
    full_seconds = best_time(lambda: video._decode_video_frames(half_hour_video, [frame_count - 1]), repeats=2)
    print(f"half-hour video: 4 frames in {read_seconds * 1000:.1f} ms ({decoded} decoded), "
          f"full sequential decode {full_seconds * 1000:.1f} ms ({frame_count} decoded)")
    assert full_seconds >= 5 * read_seconds
