"""Tests for vast.data.media on real files made with ffmpeg, sox and PIL."""

import random
import subprocess
import wave

import av
import numpy as np
import pytest
import torch
import torchaudio
from PIL import Image

from vast.data import media
from vast.errors import DataError, MediaError

NUM_FRAMES = 30
FPS = 10
WIDTH, HEIGHT = 64, 48
GRAY_STEP = 8  # frame i is solid gray 8 * i, so a decoded frame's mean identifies its index
TONE_HZ = 440

VIDEO_CODECS = {
    # Lossless (or near) codecs so decoded gray levels stay within a couple of units of the source.
    "clip.mp4": ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-c:a", "aac"],
    "faststart.mp4": ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-c:a", "aac", "-movflags", "+faststart"],
    "clip.webm": ["-c:v", "libvpx-vp9", "-lossless", "1", "-c:a", "libvorbis"],
    "clip.mkv": ["-c:v", "ffv1", "-c:a", "pcm_s16le"],
    "silent.mp4": ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-an"],
}


def run_ffmpeg(arguments, stdin_bytes=None):
    subprocess.run(["ffmpeg", "-v", "error", "-y", *arguments], input=stdin_bytes, check=True, capture_output=True)


def write_wav(path, samples: np.ndarray, sample_rate: int):
    """Write int16 samples [S] or [S, channels] with the standard library's wave module."""
    samples = samples if samples.ndim == 2 else samples[:, None]
    with wave.open(str(path), "wb") as wav_file:
        wav_file.setnchannels(samples.shape[1])
        wav_file.setsampwidth(2)
        wav_file.setframerate(sample_rate)
        wav_file.writeframes(samples.astype("<i2").tobytes())


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    gray_frames = np.repeat(np.arange(NUM_FRAMES, dtype=np.uint8) * GRAY_STEP, WIDTH * HEIGHT)
    for name, codec_arguments in VIDEO_CODECS.items():
        run_ffmpeg(
            ["-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "-"]
            + ["-f", "lavfi", "-i", f"sine=frequency={TONE_HZ}:sample_rate=44100:duration={NUM_FRAMES / FPS}"]
            + codec_arguments
            + ["-shortest", str(folder / name)],
            stdin_bytes=gray_frames.tobytes(),
        )
    for name in ("clip.mp4", "faststart.mp4"):
        data = (folder / name).read_bytes()
        (folder / f"half_{name}").write_bytes(data[: len(data) // 2])
    # Header and sample tables intact, but no media data: the container promises frames that never decode.
    data = (folder / "faststart.mp4").read_bytes()
    (folder / "headers_only.mp4").write_bytes(data[: data.index(b"mdat") + 4])
    (folder / "not_media.mp4").write_text("this is a text file, not a video\n" * 20)
    # 44.1 kHz stereo: 1000 Hz on the left, 3000 Hz on the right, so a downmix must hold both.
    subprocess.run(
        ["sox", "-n", "-r", "44100", "-c", "2", "-b", "16", str(folder / "stereo.wav")]
        + ["synth", "1.5", "sine", "1000", "sine", "3000"],
        check=True,
        capture_output=True,
    )
    noise = np.random.default_rng(0).normal(0, 3000, size=(44100 * 2, 2)).clip(-32768, 32767)
    write_wav(folder / "noise_44k.wav", noise, 44100)
    write_wav(folder / "noise_16k.wav", noise[:32000, 0], 16000)
    write_wav(folder / "twin_channels_16k.wav", noise[:32000, [0, 0]], 16000)
    write_wav(folder / "tiny.wav", np.zeros(100), 16000)
    write_wav(folder / "empty.wav", np.zeros(0), 16000)
    pattern = np.zeros((40, 50, 3), dtype=np.uint8)
    pattern[:, :25, 0] = 200
    Image.fromarray(pattern).save(folder / "image.png")
    frame_folder = folder / "frames"
    frame_folder.mkdir()
    for index in range(1, 13):
        Image.fromarray(np.full((20, 30, 3), index * 10, dtype=np.uint8)).save(frame_folder / f"frame_{index}.png")
    (frame_folder / "notes.txt").write_text("not an image")
    return folder


def frame_indices(frames: torch.Tensor) -> list[int]:
    """Recover each frame's source index from its gray level, checking the level is within codec tolerance."""
    levels = frames.float().mean(dim=(1, 2, 3))
    indices = [round(level / GRAY_STEP) for level in levels.tolist()]
    for level, index in zip(levels.tolist(), indices):
        assert abs(level - GRAY_STEP * index) <= 3, f"gray level {level} is not a clean frame"
    return indices


def dominant_frequencies(waveform: torch.Tensor, sample_rate: int, count: int) -> list[float]:
    spectrum = np.abs(np.fft.rfft(waveform.numpy()))
    frequencies = np.fft.rfftfreq(len(waveform), 1 / sample_rate)
    peaks = []
    for bin_index in np.argsort(spectrum)[::-1]:
        if all(abs(frequencies[bin_index] - peak) > 50 for peak in peaks):
            peaks.append(frequencies[bin_index])
        if len(peaks) == count:
            return sorted(peaks)
    return sorted(peaks)


# --- segment_indices -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_items, sample_num, expected",
    [
        (10, 5, [0, 2, 4, 6, 8]),
        (7, 3, [1, 3, 5]),  # segments [0,1,2] [3,4] [5,6]: the larger segments come first
        (30, 8, [1, 5, 9, 13, 17, 21, 25, 28]),
        (3, 5, [0, 1, 2, 2, 2]),  # too few items: the last one repeats
        (1, 4, [0, 0, 0, 0]),
        (5, 1, [2]),
        (4, 1, [1]),
    ],
)
def test_segment_indices_test_mode_takes_segment_middles(num_items, sample_num, expected):
    assert media.segment_indices(num_items, sample_num, False, random.Random(0)) == expected


def test_segment_indices_training_stays_in_segments_and_is_seeded():
    starts = [0, 4, 8, 12, 16, 20, 24, 27, 30]
    segments = [range(start, end) for start, end in zip(starts, starts[1:])]
    seen = set()
    for seed in range(40):
        picks = media.segment_indices(30, 8, True, random.Random(seed))
        assert picks == media.segment_indices(30, 8, True, random.Random(seed))
        assert all(pick in segment for pick, segment in zip(picks, segments))
        seen.update(picks)
    assert seen == set(range(30))  # every item is reachable


def test_segment_indices_rejects_empty():
    with pytest.raises(ValueError):
        media.segment_indices(0, 4, False, random.Random(0))


# --- video ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "clip.mkv"])
def test_read_video_frames_test_mode_takes_segment_middles(media_dir, name):
    frames = media.read_video_frames(media_dir / name, 8, False, random.Random(0))
    assert frames.dtype == torch.uint8 and frames.shape == (8, 3, HEIGHT, WIDTH)
    assert frame_indices(frames) == [1, 5, 9, 13, 17, 21, 25, 28]


@pytest.mark.parametrize("name", ["clip.webm", "clip.mkv"])
def test_frame_count_comes_from_packets_when_container_reports_none(media_dir, name):
    with av.open(str(media_dir / name)) as container:
        assert container.streams.video[0].frames == 0  # otherwise this test would not exercise the packet count
    frames = media.read_video_frames(media_dir / name, NUM_FRAMES, False, random.Random(0))
    assert frame_indices(frames) == list(range(NUM_FRAMES))


def test_read_video_frames_training_is_random_within_segments_and_seeded(media_dir):
    path = media_dir / "clip.mp4"
    first = media.read_video_frames(path, 5, True, random.Random(3))
    assert torch.equal(first, media.read_video_frames(path, 5, True, random.Random(3)))
    selections = {
        tuple(frame_indices(media.read_video_frames(path, 5, True, random.Random(seed)))) for seed in range(6)
    }
    assert len(selections) > 1
    for selection in selections:
        assert all(6 * segment <= index < 6 * (segment + 1) for segment, index in enumerate(selection))


def test_read_video_frames_pads_with_last_frame(media_dir):
    frames = media.read_video_frames(media_dir / "clip.mp4", NUM_FRAMES + 10, False, random.Random(0))
    assert frame_indices(frames) == list(range(NUM_FRAMES)) + [NUM_FRAMES - 1] * 10


def test_truncated_video_uses_the_frames_that_decode(media_dir):
    path = media_dir / "half_faststart.mp4"
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == NUM_FRAMES  # the header still promises every frame
    indices = frame_indices(media.read_video_frames(path, NUM_FRAMES, False, random.Random(0)))
    decodable = len(set(indices))
    assert 0 < decodable < NUM_FRAMES
    assert indices == list(range(decodable)) + [decodable - 1] * (NUM_FRAMES - decodable)
    assert max(frame_indices(media.read_video_frames(path, 4, True, random.Random(1)))) < decodable


@pytest.mark.parametrize(
    "name, reason",
    [
        ("half_clip.mp4", "cannot be opened"),  # moov atom was at the end and got cut off
        ("headers_only.mp4", "no decodable frames"),
        ("not_media.mp4", "cannot be opened"),
        ("missing.mp4", "not found"),
        ("stereo.wav", "no video stream"),
    ],
)
def test_unreadable_video_raises_media_error_naming_the_file(media_dir, name, reason):
    with pytest.raises(MediaError, match=reason) as error:
        media.read_video_frames(media_dir / name, 4, False, random.Random(0))
    assert str(media_dir / name) in str(error.value)


# --- images and frame folders --------------------------------------------------------------------


def test_read_image_is_rgb_uint8(media_dir):
    image = media.read_image(media_dir / "image.png")
    assert image.dtype == torch.uint8 and image.shape == (1, 3, 40, 50)
    assert image[0, 0, 0, 0] == 200 and image[0, 0, 0, 49] == 0 and image[0, 1].max() == 0


def test_read_image_rejects_non_image(media_dir):
    with pytest.raises(MediaError, match="cannot be read as an image") as error:
        media.read_image(media_dir / "not_media.mp4")
    assert str(media_dir / "not_media.mp4") in str(error.value)


def test_read_frame_folder_uses_natural_order(media_dir):
    frames = media.read_frame_folder(media_dir / "frames", 12, False, random.Random(0))
    assert frames.shape == (12, 3, 20, 30)
    # frame_2 must come before frame_10; a plain string sort would put frame_10 second.
    assert frames[:, 0, 0, 0].tolist() == [10 * index for index in range(1, 13)]
    middles = media.read_frame_folder(media_dir / "frames", 3, False, random.Random(0))
    assert middles[:, 0, 0, 0].tolist() == [20, 60, 100]  # middles of frames 1-4, 5-8, 9-12


def test_read_frame_folder_without_images_raises(tmp_path):
    with pytest.raises(MediaError, match="no images") as error:
        media.read_frame_folder(tmp_path, 4, False, random.Random(0))
    assert str(tmp_path) in str(error.value)


# --- VisionTransform -----------------------------------------------------------------------------


def normalised(value: float, mean=media.CLIP_MEAN, std=media.CLIP_STD) -> torch.Tensor:
    return (value - torch.tensor(mean)) / torch.tensor(std)


def transformed(resolution, transforms, training, frames, rng, mean=media.CLIP_MEAN, std=media.CLIP_STD):
    resized = media.VisionTransform(resolution, transforms, training)(frames, rng)
    assert resized.dtype == torch.uint8  # loaders hand uint8 over; batches normalise on their device
    return media.normalize_frames(resized, mean, std)


def test_transform_none_resizes_and_normalises():
    frames = torch.full((2, 3, 48, 64), 255, dtype=torch.uint8)
    output = transformed(32, "none", True, frames, random.Random(0))
    assert output.dtype == torch.float32 and output.shape == (2, 3, 32, 32)
    torch.testing.assert_close(output[:, :, 5, 7], normalised(1.0).expand(2, 3))
    imagenet = transformed(32, "none", False, frames, random.Random(0), media.IMAGENET_MEAN, media.IMAGENET_STD)
    expected = normalised(1.0, media.IMAGENET_MEAN, media.IMAGENET_STD)
    torch.testing.assert_close(imagenet[0, :, 0, 0], expected)


def test_crop_flip_test_mode_resizes_shorter_side_then_centre_crops():
    frames = torch.full((1, 3, 48, 96), 255, dtype=torch.uint8)
    frames[..., 0:24] = 0
    frames[..., 48:72] = 0
    # Shorter side to 24 -> 24x48 with black columns 0-11 and 24-35; the centre crop keeps columns 12-35.
    output = transformed(24, "crop_flip", False, frames, random.Random(0))
    assert output.shape == (1, 3, 24, 24)
    for column in (2, 8):
        torch.testing.assert_close(output[0, :, 10, column], normalised(1.0))
    for column in (15, 20):
        torch.testing.assert_close(output[0, :, 10, column], normalised(0.0))


def test_crop_flip_training_uses_one_crop_per_clip():
    noise = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    transform = media.VisionTransform(32, "crop_flip", training=True)
    outputs = [transform(noise.expand(4, -1, -1, -1), random.Random(seed)) for seed in range(5)]
    for output in outputs:
        assert output.shape == (4, 3, 32, 32)
        assert all(torch.equal(output[0], output[frame]) for frame in range(1, 4))
    assert not all(torch.equal(outputs[0], output) for output in outputs[1:])
    torch.testing.assert_close(transform(noise, random.Random(2)), outputs[2][:1])


def test_crop_flip_training_flips_about_half_the_time():
    half_black = torch.full((1, 3, 64, 64), 255, dtype=torch.uint8)
    half_black[..., :32] = 0
    transform = media.VisionTransform(32, "crop_flip", training=True)
    # A crop keeps at least 57 of 64 columns, so the left edge stays black unless the clip was flipped.
    left_edge_white = [transform(half_black, random.Random(seed))[0, 0, 16, 0] > 0 for seed in range(40)]
    assert 5 < sum(left_edge_white) < 35


def test_unknown_transform_name_lists_the_valid_ones():
    with pytest.raises(DataError, match="none, crop_flip"):
        media.VisionTransform(224, "random_augment", training=True)


# --- audio ---------------------------------------------------------------------------------------


def test_load_waveform_resamples_and_downmixes(media_dir):
    waveform = media.load_waveform(media_dir / "stereo.wav")
    assert waveform.dtype == torch.float32 and waveform.dim() == 1
    assert abs(len(waveform) - 24000) <= 32  # 1.5 s at 16 kHz
    assert waveform.abs().max() <= 1.0
    peaks = dominant_frequencies(waveform, media.SAMPLE_RATE, 2)
    assert abs(peaks[0] - 1000) < 2 and abs(peaks[1] - 3000) < 2  # both channels survive the downmix


def test_load_waveform_averages_channels(media_dir):
    # Identical channels must give back that channel unscaled (FFmpeg's own downmix would add 3 dB).
    path = media_dir / "twin_channels_16k.wav"
    with wave.open(str(path)) as wav_file:
        samples = np.frombuffer(wav_file.readframes(wav_file.getnframes()), dtype="<i2").reshape(-1, 2)
    expected = torch.from_numpy(samples[:, 0] / 2**15).float()
    torch.testing.assert_close(media.load_waveform(path), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "clip.mkv"])
def test_load_waveform_reads_a_videos_audio_track(media_dir, name):
    waveform = media.load_waveform(media_dir / name)
    assert abs(len(waveform) - NUM_FRAMES / FPS * media.SAMPLE_RATE) < 2048  # encoder priming/padding
    assert abs(dominant_frequencies(waveform, media.SAMPLE_RATE, 1)[0] - TONE_HZ) < 2


@pytest.mark.parametrize(
    "name, reason",
    [
        ("silent.mp4", "has no audio stream"),
        ("empty.wav", "no decodable samples"),
        ("not_media.mp4", "cannot be opened"),
        ("missing.wav", "not found"),
    ],
)
def test_unreadable_audio_raises_media_error_naming_the_file(media_dir, name, reason):
    with pytest.raises(MediaError, match=reason) as error:
        media.load_waveform(media_dir / name)
    assert str(media_dir / name) in str(error.value)


def test_compute_fbank_shape_and_rejects_too_short():
    waveform = torch.zeros(16000).uniform_(-0.5, 0.5)
    assert media.compute_fbank(waveform, 64).shape == (1 + (16000 - 400) // 160, 64)
    with pytest.raises(ValueError):
        media.compute_fbank(torch.zeros(399), 64)


def torchaudio_reference_fbank(path, melbins: int) -> torch.Tensor:
    waveform, sample_rate = torchaudio.load(str(path))
    waveform = torchaudio.functional.resample(waveform, sample_rate, media.SAMPLE_RATE).mean(dim=0, keepdim=True)
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform * 2**15, num_mel_bins=melbins, sample_frequency=media.SAMPLE_RATE, frame_length=25, frame_shift=10
    )
    return (fbank - media.AUDIO_MEAN) / (2 * media.AUDIO_STD)


def test_fbank_matches_torchaudio_without_resampling(media_dir):
    # At 16 kHz mono both paths only convert int16 to float, so they must agree to float precision.
    ours = media.compute_fbank(media.load_waveform(media_dir / "noise_16k.wav"), 64)
    torch.testing.assert_close(ours, torchaudio_reference_fbank(media_dir / "noise_16k.wav", 64), atol=1e-4, rtol=0)


def test_fbank_matches_torchaudio_after_resampling(media_dir):
    ours = media.compute_fbank(media.load_waveform(media_dir / "noise_44k.wav"), 64)
    reference = torchaudio_reference_fbank(media_dir / "noise_44k.wav", 64)
    difference = (ours - reference).abs()
    # FFmpeg's resampler and torchaudio's sinc filter differ only in their transition bands, which sit
    # above ~6 kHz (mel bin 56 is centred near 5.7 kHz); measured here the lower bins agree to ~0.002
    # and the top bins to ~0.05. 0.005 normalised units is 0.066 in log-energy (7% energy), so a gain
    # slip such as FFmpeg's 1/sqrt(2) downmix (0.053 everywhere) or a wrong mel scale fails.
    assert len(ours) == len(reference)
    assert difference[:, :56].max() < 0.005
    assert difference.max() < 0.1


def test_slice_fbank_pads_short_audio():
    fbank = torch.arange(10 * 4, dtype=torch.float32).reshape(10, 4) + 1
    single = media.slice_fbank(fbank, 1, 16, False, random.Random(0))
    assert single.shape == (1, 16, 4)
    assert torch.equal(single[0, :10], fbank) and not single[0, 10:].any()
    triple = media.slice_fbank(fbank, 3, 16, False, random.Random(0))
    assert triple.shape == (3, 16, 4)
    assert torch.equal(triple[0, :10], fbank) and not triple[1:].any()


def test_slice_fbank_long_audio_takes_middle_windows():
    fbank = torch.arange(100, dtype=torch.float32)[:, None].expand(100, 3)
    # 100 rows pad to 112 = 7 windows of 16; two segments [0-3] [4-6] have middles 1 and 5.
    windows = media.slice_fbank(fbank, 2, 16, False, random.Random(0))
    assert windows.shape == (2, 16, 3)
    assert windows[0, :, 0].tolist() == list(range(16, 32))
    assert windows[1, :, 0].tolist() == list(range(80, 96))
    for seed in range(10):
        trained = media.slice_fbank(fbank, 2, 16, True, random.Random(seed))
        assert trained[0, 0, 0] in (0, 16, 32, 48) and trained[1, 0, 0] in (64, 80, 96)
        assert torch.equal(trained, media.slice_fbank(fbank, 2, 16, True, random.Random(seed)))


# --- end to end ----------------------------------------------------------------------------------


def test_load_audio_shapes(media_dir):
    spec = media.AudioSpec(sample_num=2, melbins=32, target_length=64)
    assert media.load_audio(media_dir / "clip.mp4", spec, True, random.Random(0)).shape == (2, 64, 32)
    default_spec = media.AudioSpec()
    assert media.load_audio(media_dir / "stereo.wav", default_spec, False, random.Random(0)).shape == (1, 1024, 64)


def test_load_audio_too_short_names_the_file(media_dir):
    with pytest.raises(MediaError, match="too short") as error:
        media.load_audio(media_dir / "tiny.wav", media.AudioSpec(), False, random.Random(0))
    assert str(media_dir / "tiny.wav") in str(error.value)


@pytest.mark.parametrize(
    "format, name, sample_num, frame_count",
    [
        ("video_rawvideo", "clip.webm", 4, 4),
        ("video_frame", "frames", 6, 6),
        ("image_rawimage", "image.png", 8, 1),
    ],
)
def test_load_vision_shapes(media_dir, format, name, sample_num, frame_count):
    spec = media.VisionSpec(format=format, sample_num=sample_num, resolution=32, transforms="crop_flip")
    vision = media.load_vision(media_dir / name, spec, True, random.Random(0))
    assert vision.dtype == torch.float32 and vision.shape == (frame_count, 3, 32, 32)


def test_load_vision_unknown_format_lists_the_valid_ones(media_dir):
    spec = media.VisionSpec(format="video_gif", sample_num=4)
    with pytest.raises(DataError, match="video_rawvideo, video_frame, image_rawimage"):
        media.load_vision(media_dir / "clip.mp4", spec, False, random.Random(0))


# --- finding files -------------------------------------------------------------------------------


def test_find_media_file(media_dir):
    assert media.find_media_file(media_dir, "clip", media.VIDEO_EXTENSIONS) == media_dir / "clip.mp4"
    assert media.find_media_file(media_dir, "clip", (".avi", ".webm")) == media_dir / "clip.webm"
    assert media.find_media_file(media_dir, "clip.mkv", media.VIDEO_EXTENSIONS) == media_dir / "clip.mkv"
    assert media.find_media_file(media_dir, "frames", ("",)) == media_dir / "frames"


def test_find_media_file_missing_names_folder_id_and_extensions(media_dir):
    with pytest.raises(DataError) as error:
        media.find_media_file(media_dir, "video42", (".mp4", ".webm"))
    message = str(error.value)
    assert str(media_dir) in message and "video42" in message and ".mp4" in message and ".webm" in message


@pytest.mark.parametrize("layout, rate, direct", [("mono", 16000, True), ("stereo", 16000, True),
                                                   ("mono", 44100, False)])
def test_pcm16_wav_is_read_directly_with_the_values_pyav_gives(tmp_path, layout, rate, direct):
    path = tmp_path / f"{layout}_{rate}.wav"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"anoisesrc=d=1.2:c=pink,aformat=channel_layouts={layout}", "-ar", str(rate),
                    "-c:a", "pcm_s16le", str(path)], check=True)
    assert (media._read_pcm16_wav(path, 16000) is not None) == direct
    through_pyav = media.load_waveform(media.MediaBytes("same.bytes", path.read_bytes()))  # no .wav: PyAV
    assert torch.equal(media.load_waveform(path), through_pyav)
    assert torch.equal(media.load_waveform(media.MediaBytes("member.wav", path.read_bytes())), through_pyav)
