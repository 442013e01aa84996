"""Builds the embedded demo corpus: small real mp4 clips whose picture, sound and speech vary independently.

Each clip is 3 s long and has three independent factors:

- picture (8): a filled circle in one of 4 colours (red, green, blue, yellow) that moves along one of
  2 paths (left to right, top to bottom) over a dark background; 128x128 pixels, 10 fps.
- sound (4): a background sound synthesised at 16 kHz: a low hum (~200 Hz), a high pulsing alarm
  (~1500 Hz, on/off at 4 Hz), a soft white-noise hiss, a whistle rising in pitch.
- speech (6): a short phrase spoken by espeak-ng ("bring the apple", "close the door", ...), whose
  key word (apple, door, car, piano, table, window) is what the captions and answers name.

That is 8 x 4 x 6 = 192 combinations. The test split holds, for every picture, the same number k of
clips with distinct (sound, speech) pairs, so every test clip has a unique combination while each
picture is shared by k test clips: text->video retrieval from vision alone can do no better than
R@1 ~ 1/k, and needs audio and subtitles to tell the clips apart. The default 320 clips give k = 8
(64 test clips, 256 training clips); k scales with the corpus size (at least 2, hence at least 24
clips). Training clips cycle through the pictures and draw sound and speech from balanced shuffles,
so combinations may repeat there, each with its own jitter of shape, path, colour, pitch and timing.

Everything is seeded per clip from (seed, clip index) with numpy Generators, and encoding uses fixed
single-threaded bit-exact ffmpeg settings, so the same seed gives identical annotation files and
identical decoded frames and audio. Frames and sounds are drawn with numpy because no library makes
such controlled stimuli; speech comes from espeak-ng and encoding from ffmpeg (Debian packages).

Files written under ``out_dir``: ``videos/<id>.mp4`` (H.264 + AAC), ``audios/<id>.wav`` (16 kHz mono
PCM16), ``speech/<word>.wav`` (the cached phrases), ``annotations/*.json`` (every format of DESIGN 2.4)
and ``MANIFEST.json`` (written last; its presence marks a complete build). With ``raw_clips`` > 0,
``raw/<id>.mp4`` holds that many more clips that no annotation file mentions (the labeling pipeline's
input in the demo) and ``annotations/raw_truth.json`` their factors, to measure the labels against.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vast.errors import DataError, VastError

GENERATOR_VERSION = 2
MIN_CLIPS = 24
TEST_FRACTION = 0.2

FRAME_SIZE = 128
FPS = 10
CLIP_SECONDS = 3.0
NUM_FRAMES = int(FPS * CLIP_SECONDS)
SAMPLE_RATE = 16000
NUM_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)

COLORS = {"red": (220, 45, 40), "green": (40, 200, 70), "blue": (55, 85, 235), "yellow": (235, 210, 45)}
MOTIONS = {"left to right": "right", "top to bottom": "down"}  # path -> one-word QA answer
SOUNDS = ("hum", "alarm", "hiss", "whistle")
PHRASES = {  # chosen so that Whisper tiny transcribes espeak-ng's voice reliably over every sound
    "apple": "bring the apple",
    "door": "close the door",
    "car": "wash the car",
    "piano": "play the piano",
    "table": "clean the table",
    "window": "open the window",
}
PICTURES = [(color, motion) for color in COLORS for motion in MOTIONS]

# Caption vocabulary. Every word is a whole word of the BERT uncased vocabulary.
_MOTION_VERBS = ("moves", "slides", "travels")
_SOUND_PHRASES = {
    "hum": ("a low hum", "a low humming"),
    "alarm": ("a high alarm", "a pulsing alarm"),
    "hiss": ("a soft hiss", "a hissing noise"),
    "whistle": ("a rising whistle", "a whistle rising in pitch"),
}
_SOUND_WORDS = {"hum": ("hum", "humming"), "alarm": ("alarm",), "hiss": ("hiss", "hissing"), "whistle": ("whistle",)}
_SPEAKERS = ("someone", "a voice", "a person", "a speaker")
_OMNI_TEMPLATES = (
    "{picture} while {sound} plays and {speaker} says {word}",
    "{speaker} says {word} as {sound} plays and {picture}",
    "with {sound} in the background, {picture} and {speaker} says {word}",
    "{picture} on a dark screen, {sound} is heard and {speaker} says {phrase}",
    "{sound} plays while {picture} and {speaker} says {phrase}",
)
_VISION_TEMPLATES = ("{picture}", "{picture} on a dark screen", "a video of {picture_np}")
_AUDIO_TEMPLATES = ("{sound} plays while {speaker} speaks", "{speaker} speaks over {sound}")
_QUESTIONS = {  # kind -> phrasings; the first one is used for the test split
    "color": ("what color is the circle", "what is the color of the circle", "what color is the moving shape"),
    "direction": ("which direction does the circle move", "which way does the shape move"),
    "sound": ("what sound can be heard", "what sound plays in the background", "what is the background sound"),
    "word": ("what word is spoken", "what word does the speaker say", "which word can be heard in the speech"),
}
ANNOTATION_FILES = (
    "ret_train", "ret_test", "cap_train", "cap_test", "cap_test_coco",
    "qa_train", "qa_test", "vast27m_train", "vast27m_test", "captioner_meta",
)


@dataclass(frozen=True)
class ClipSpec:
    """One clip: its factors, split and index (the per-clip seed)."""

    index: int
    clip_id: str
    color: str
    motion: str
    sound: str
    word: str
    split: str

    @property
    def picture(self) -> str:
        return f"{self.color} {self.motion}"


# ---------------------------------------------------------------- layout
def plan_clips(num_clips: int, seed: int) -> list[ClipSpec]:
    """Assigns factors and splits to ``num_clips`` clips (see the module docstring)."""
    if num_clips < MIN_CLIPS:
        raise DataError(f"demo corpus needs at least {MIN_CLIPS} clips, got {num_clips}")
    if seed < 0:
        raise DataError(f"demo corpus seed must be >= 0, got {seed}")
    rng = np.random.default_rng([seed, 0])
    num_pictures, num_pairs = len(PICTURES), len(SOUNDS) * len(PHRASES)
    per_picture = int(round(num_clips * TEST_FRACTION / num_pictures))
    per_picture = max(2, min(num_pairs, per_picture, (num_clips - num_pictures) // num_pictures))
    words = list(PHRASES)

    combos = []  # (picture index, sound index, word index, split)
    for picture in range(num_pictures):
        for pair in rng.permutation(num_pairs)[:per_picture]:
            combos.append((picture, int(pair) // len(words), int(pair) % len(words), "test"))
    num_train = num_clips - len(combos)
    sounds = rng.permutation(np.resize(np.arange(len(SOUNDS)), num_train))
    speech = rng.permutation(np.resize(np.arange(len(words)), num_train))
    for i in range(num_train):
        combos.append((i % num_pictures, int(sounds[i]), int(speech[i]), "train"))

    clips = []
    for index, combo_index in enumerate(rng.permutation(len(combos))):
        picture, sound, word, split = combos[combo_index]
        color, motion = PICTURES[picture]
        clips.append(ClipSpec(index, f"demo_{index:04d}", color, motion, SOUNDS[sound], words[word], split))
    return clips


def plan_raw_clips(num_raw: int, first_index: int, seed: int) -> list[ClipSpec]:
    """``num_raw`` extra clips held out as "raw videos" for the labeling demo: factors drawn like the
    training clips' (pictures in turn, sounds and phrases from balanced shuffles) from a generator of
    their own, so adding them changes none of the other clips."""
    rng = np.random.default_rng([seed, 3])
    words = list(PHRASES)
    sounds = rng.permutation(np.resize(np.arange(len(SOUNDS)), num_raw))
    speech = rng.permutation(np.resize(np.arange(len(words)), num_raw))
    pictures = rng.permutation(np.resize(np.arange(len(PICTURES)), num_raw))
    return [ClipSpec(first_index + i, f"raw_{i:04d}", *PICTURES[int(pictures[i])], SOUNDS[int(sounds[i])],
                     words[int(speech[i])], "raw") for i in range(num_raw)]


def raw_truth(clips: list[ClipSpec]) -> list[dict]:
    """What each raw clip shows, sounds like and says: the ground truth its labels are measured against."""
    return [{"clip_id": c.clip_id, "color": c.color, "motion": c.motion, "sound": c.sound, "word": c.word,
             "phrase": PHRASES[c.word]} for c in clips if c.split == "raw"]


def fact_words(truth: dict) -> dict[str, tuple[str, ...]]:
    """The words that name each fact of a raw clip (a `raw_truth.json` row) in a caption."""
    return {"colour": (truth["color"],), "shape": ("circle",), "direction": (truth["motion"],),
            "sound": _SOUND_WORDS[truth["sound"]],
            "word": (truth["word"],)}


# ---------------------------------------------------------------- captions and annotations
def _caption_parts(clip: ClipSpec, rng: np.random.Generator) -> dict:
    verb = _MOTION_VERBS[rng.integers(len(_MOTION_VERBS))]
    return {
        "picture": f"a {clip.color} circle {verb} from {clip.motion}",
        "picture_np": f"a {clip.color} circle moving from {clip.motion}",
        "sound": _SOUND_PHRASES[clip.sound][rng.integers(2)],
        "speaker": _SPEAKERS[rng.integers(len(_SPEAKERS))],
        "word": clip.word,
        "phrase": PHRASES[clip.word],
    }


def _subtitle(clip: ClipSpec) -> str:
    phrase = PHRASES[clip.word]
    return f" {phrase[0].upper()}{phrase[1:]}."  # Whisper style: leading space, capital, full stop


def _qa_answers(clip: ClipSpec) -> dict:
    return {"color": clip.color, "direction": MOTIONS[clip.motion], "sound": clip.sound, "word": clip.word}


def make_annotations(clips: list[ClipSpec], seed: int) -> dict[str, object]:
    """All annotation files of the corpus, by name (without ``.json``)."""
    files: dict[str, list] = {name: [] for name in ANNOTATION_FILES if name != "cap_test_coco"}
    coco_refs = []
    for clip in (c for c in clips if c.split != "raw"):  # raw clips have no annotations, only truth
        rng = np.random.default_rng([seed, 2, clip.index])
        vid, subtitle, split = clip.clip_id, _subtitle(clip), clip.split
        order = rng.permutation(len(_OMNI_TEMPLATES))
        omni = [_OMNI_TEMPLATES[t].format(**_caption_parts(clip, rng)) for t in order[:3]]
        vision = [_VISION_TEMPLATES[t].format(**_caption_parts(clip, rng)) for t in rng.permutation(3)[:2]]
        audio = [t.format(**_caption_parts(clip, rng)) for t in _AUDIO_TEMPLATES]

        files[f"ret_{split}"].append({"video_id": vid, "desc": omni[0], "subtitle": subtitle})
        files[f"vast27m_{split}"].append(
            {"clip_id": vid, "vision_cap": vision, "audio_cap": audio, "subtitle": subtitle, "vast_cap": omni[0]}
        )
        files["captioner_meta"].append({"video_id": vid})
        answers = _qa_answers(clip)
        if split == "train":
            files["cap_train"].append({"video_id": vid, "desc": omni[0], "subtitle": subtitle})
            for kind, phrasings in _QUESTIONS.items():
                question = phrasings[rng.integers(len(phrasings))]
                files["qa_train"].append(
                    {"video_id": vid, "question": question, "answer": answers[kind], "subtitle": subtitle}
                )
        else:
            files["cap_test"].append({"video_id": vid, "desc": omni, "subtitle": subtitle})
            coco_refs.extend((vid, caption) for caption in omni)
            files["qa_test"].append({
                "video_id": vid,
                "question": [phrasings[0] for phrasings in _QUESTIONS.values()],
                "answer": [answers[kind] for kind in _QUESTIONS],
                "subtitle": subtitle,
            })
    out: dict[str, object] = dict(files)
    if any(c.split == "raw" for c in clips):
        out["raw_truth"] = raw_truth(clips)
    out["cap_test_coco"] = {
        "annotations": [{"video_id": vid, "caption": cap, "id": n} for n, (vid, cap) in enumerate(coco_refs)],
        "videos": [{"id": clip.clip_id} for clip in clips if clip.split == "test"],
    }
    return out


# ---------------------------------------------------------------- media synthesis
def render_frames(clip: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """The clip's picture: a circle moving along its path.  # [T, H, W, 3] uint8"""
    size = FRAME_SIZE
    radius = 24 + int(rng.integers(-2, 3))  # large enough to cover several patches of a small ViT
    margin = radius + 6
    start = margin + rng.uniform(0, 8)
    end = size - margin - rng.uniform(0, 8)
    cross = size / 2 + rng.uniform(-12, 12)  # position across the path
    along = np.linspace(start, end, NUM_FRAMES)
    if clip.motion == "left to right":
        cx, cy = along, np.full(NUM_FRAMES, cross)
    else:
        cx, cy = np.full(NUM_FRAMES, cross), along
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.sqrt((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2)  # [T, H, W]
    alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0)[..., None]

    base = rng.integers(12, 28) + rng.integers(-4, 5, size=3)
    gradient = np.linspace(-6, 6, size)[None, :, None, None]  # darker at the top
    background = np.clip(base[None, None, None, :] + gradient, 0, 255)
    color = np.clip(np.array(COLORS[clip.color]) + rng.integers(-12, 13, size=3), 0, 255)
    frames = background * (1 - alpha) + color[None, None, None, :] * alpha
    return np.round(frames).astype(np.uint8)


def render_sound(sound: str, rng: np.random.Generator) -> np.ndarray:
    """A background sound at 16 kHz.  # [NUM_SAMPLES] float32"""
    t = np.arange(NUM_SAMPLES) / SAMPLE_RATE
    if sound == "hum":
        f0 = 200 + rng.uniform(-10, 10)
        wave_ = np.sin(2 * np.pi * f0 * t) + 0.35 * np.sin(4 * np.pi * f0 * t)
        wave_ *= 0.09 * (1 + 0.1 * np.sin(2 * np.pi * 1.5 * t))
    elif sound == "alarm":
        f0 = 1500 + rng.uniform(-30, 30)
        gate = np.clip(6 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, np.pi)), 0, 1)  # soft-edged pulses
        wave_ = 0.12 * gate * np.sin(2 * np.pi * f0 * t)
    elif sound == "hiss":
        wave_ = 0.025 * rng.standard_normal(NUM_SAMPLES)
    elif sound == "whistle":
        f_start, f_end = 500 + rng.uniform(-40, 40), 2500 + rng.uniform(-100, 100)
        freq = f_start * (f_end / f_start) ** (t / CLIP_SECONDS)  # exponential sweep
        wave_ = 0.1 * np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)
    else:
        raise ValueError(f"unknown sound {sound!r}")
    return wave_.astype(np.float32)


def mix_audio(clip: ClipSpec, speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Background sound plus the spoken phrase at a jittered onset.  # [NUM_SAMPLES] float32"""
    audio = render_sound(clip.sound, rng)
    speech = speech[: NUM_SAMPLES - SAMPLE_RATE // 2]
    room = NUM_SAMPLES - len(speech) - SAMPLE_RATE // 2
    onset = SAMPLE_RATE // 4 + int(rng.integers(0, max(1, room)))
    audio[onset : onset + len(speech)] += speech * rng.uniform(0.6, 0.7)
    fade = np.linspace(0, 1, SAMPLE_RATE // 100)  # 10 ms fades avoid clicks at the clip edges
    audio[: len(fade)] *= fade
    audio[-len(fade) :] *= fade[::-1]
    return np.clip(audio, -1, 1)


# ---------------------------------------------------------------- files and tools
def _require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DataError(f"{name} not found on PATH: install the Debian package '{package}' (apt-get install {package})")
    return path


def _run_tool(args: list[str], what: str, stdin: bytes | None = None) -> None:
    result = subprocess.run(args, input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise DataError(f"{what} failed ({args[0]} exit {result.returncode}): {message[-1] if message else ''}")


def write_wav(path: Path, audio: np.ndarray) -> None:
    """Writes float audio in [-1, 1] as 16 kHz mono PCM16 (atomically)."""
    tmp = path.with_name(path.name + ".part")
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(np.round(audio * 32767).astype("<i2").tobytes())
    os.replace(tmp, path)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as src:
        if src.getsampwidth() != 2 or src.getnchannels() != 1:
            raise DataError(f"{path}: expected mono 16-bit PCM")
        data = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")
        return data.astype(np.float32) / 32768.0, src.getframerate()


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """Band-limited resampling to 16 kHz by truncating (or zero-padding) the spectrum."""
    if rate == SAMPLE_RATE:
        return audio
    n_out = int(round(len(audio) * SAMPLE_RATE / rate))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    return (np.fft.irfft(spectrum[: n_out // 2 + 1], n_out) * (n_out / len(audio))).astype(np.float32)


def synthesize_phrases(espeak: str, speech_dir: Path) -> dict[str, np.ndarray]:
    """Speaks each phrase once with espeak-ng; trims silence, peak-normalises and caches it at 16 kHz."""
    speech_dir.mkdir(parents=True, exist_ok=True)
    phrases = {}
    with tempfile.TemporaryDirectory() as tmp:
        for word, phrase in PHRASES.items():
            raw = Path(tmp) / f"{word}.wav"
            _run_tool([espeak, "-v", "en-us", "-s", "150", "-w", str(raw), phrase], f"espeak-ng '{phrase}'")
            audio = _resample(*_read_wav(raw))
            loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
            pad = SAMPLE_RATE // 50
            audio = audio[max(0, loud[0] - pad) : loud[-1] + pad]
            audio = audio / np.abs(audio).max()
            write_wav(speech_dir / f"{word}.wav", audio)
            phrases[word] = _read_wav(speech_dir / f"{word}.wav")[0]  # exactly what the cache holds
    return phrases


def _ffmpeg_args(ffmpeg: str, wav: Path, out: Path) -> list[str]:
    size = f"{FRAME_SIZE}x{FRAME_SIZE}"
    return [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", size, "-framerate", str(FPS), "-i", "pipe:0",
        "-f", "wav", "-i", str(wav),
        "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-g", str(FPS), "-bf", "0",
        "-pix_fmt", "yuv420p", "-threads", "1",
        "-c:a", "aac", "-b:a", "48k", "-ar", str(SAMPLE_RATE), "-ac", "1",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
        "-f", "mp4", str(out),
    ]


_worker_state: dict = {}


def _init_worker(out_dir: Path, seed: int, ffmpeg: str, phrases: dict[str, np.ndarray]) -> None:
    _worker_state.update(out_dir=out_dir, seed=seed, ffmpeg=ffmpeg, phrases=phrases)


def _render_clip(clip: ClipSpec) -> str:
    """Writes one clip's wav and mp4; runs in a pool worker."""
    out_dir, seed = _worker_state["out_dir"], _worker_state["seed"]
    rng = np.random.default_rng([seed, 1, clip.index])
    frames = render_frames(clip, rng)
    audio = mix_audio(clip, _worker_state["phrases"][clip.word], rng)
    raw = clip.split == "raw"  # a raw clip is only its mp4, as a camera would give it
    wav = out_dir / ("raw" if raw else "audios") / f"{clip.clip_id}.wav"
    write_wav(wav, audio)
    mp4 = out_dir / ("raw" if raw else "videos") / f"{clip.clip_id}.mp4"
    tmp = mp4.with_name(mp4.name + ".part")
    _run_tool(_ffmpeg_args(_worker_state["ffmpeg"], wav, tmp), f"encoding {mp4}", stdin=frames.tobytes())
    os.replace(tmp, mp4)
    if raw:
        wav.unlink()
    return clip.clip_id


# ---------------------------------------------------------------- build
def corpus_files(manifest: dict) -> list[str]:
    """Every media, speech and annotation file of a built corpus, relative to its folder."""
    files = list(manifest["annotations"].values()) + list(manifest["speech"].values())
    for clip in manifest["clips"].values():
        files += [clip["video"]] + ([clip["audio"]] if clip["audio"] else [])
    return files


def _load_if_built(out_dir: Path, num_clips: int, seed: int, raw_clips: int) -> dict | None:
    path = out_dir / "MANIFEST.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = (manifest.get("version"), manifest.get("num_clips"), manifest.get("seed"), manifest.get("num_raw", 0)) == (
        GENERATOR_VERSION, num_clips, seed, raw_clips)
    if same and all((out_dir / f).is_file() for f in corpus_files(manifest)):
        return manifest
    return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _build(out_dir, num_clips: int, seed: int, workers: int, force: bool, raw_clips: int = 0) -> tuple[dict, int]:
    """Builds the corpus (or reuses a complete one); returns the manifest and the number of files written."""
    out_dir = Path(out_dir)
    if raw_clips < 0:
        raise DataError(f"demo corpus raw clips must be >= 0, got {raw_clips}")
    clips = plan_clips(num_clips, seed)  # validates the arguments before anything is touched
    clips += plan_raw_clips(raw_clips, num_clips, seed)
    if not force and (manifest := _load_if_built(out_dir, num_clips, seed, raw_clips)) is not None:
        return manifest, 0
    ffmpeg = _require_tool("ffmpeg", "ffmpeg")
    espeak = _require_tool("espeak-ng", "espeak-ng")

    (out_dir / "MANIFEST.json").unlink(missing_ok=True)  # the build is incomplete until it is rewritten
    for sub in ("videos", "audios", "annotations") + (("raw",) if raw_clips else ()):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    wanted = {c.clip_id for c in clips}
    for sub, pattern in (("videos", "demo_*.mp4"), ("audios", "demo_*.wav"), ("raw", "raw_*.mp4")):
        for stale in (out_dir / sub).glob(pattern):  # clips left from a larger earlier build
            if stale.stem not in wanted:
                stale.unlink()
    (out_dir / "annotations" / "raw_truth.json").unlink(missing_ok=True)

    phrases = synthesize_phrases(espeak, out_dir / "speech")
    init_args = (out_dir, seed, ffmpeg, phrases)
    if workers <= 1:
        _init_worker(*init_args)
        for clip in clips:
            _render_clip(clip)
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init_args) as pool:
            for _ in pool.map(_render_clip, clips, chunksize=4):
                pass

    annotations = {}
    for name, content in make_annotations(clips, seed).items():
        annotations[name] = f"annotations/{name}.json"
        _write_json(out_dir / annotations[name], content)

    manifest = {
        "generator": "vast.data.demo_corpus",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_clips": num_clips,
        "num_raw": raw_clips,
        "num_train": sum(c.split == "train" for c in clips),
        "num_test": sum(c.split == "test" for c in clips),
        "clip_seconds": CLIP_SECONDS,
        "total_seconds": CLIP_SECONDS * (num_clips + raw_clips),
        "fps": FPS,
        "num_frames": NUM_FRAMES,
        "frame_size": [FRAME_SIZE, FRAME_SIZE],
        "sample_rate": SAMPLE_RATE,
        "factors": {"colors": list(COLORS), "motions": list(MOTIONS), "sounds": list(SOUNDS),
                    "speech": list(PHRASES)},
        "speech": {word: f"speech/{word}.wav" for word in PHRASES},
        "annotations": annotations,
        "clips": {
            c.clip_id: {
                "picture": c.picture, "color": c.color, "motion": c.motion, "sound": c.sound,
                "speech": c.word, "split": c.split, "duration": CLIP_SECONDS,
                "video": f"{'raw' if c.split == 'raw' else 'videos'}/{c.clip_id}.mp4",
                "audio": None if c.split == "raw" else f"audios/{c.clip_id}.wav",
            }
            for c in clips
        },
    }
    _write_json(out_dir / "MANIFEST.json", manifest)
    return manifest, len(corpus_files(manifest)) + 1


def build_demo_corpus(out_dir, num_clips: int = 320, seed: int = 0, workers: int = 2, force: bool = False,
                      raw_clips: int = 0) -> dict:
    """Builds the demo corpus under ``out_dir`` and returns its manifest (also in ``out_dir/MANIFEST.json``).

    ``raw_clips`` more clips go to ``raw/`` as bare mp4 files, in no annotation file: the labeling
    pipeline's input, with their truth in ``annotations/raw_truth.json``. A complete corpus already
    there with the same clip counts, seed and generator version is returned as it is, without
    rewriting anything, unless ``force``.
    """
    return _build(out_dir, num_clips, seed, workers, force, raw_clips)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vast.data.demo_corpus", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the corpus into")
    parser.add_argument("--clips", type=int, default=320, help="number of clips (at least %d)" % MIN_CLIPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="parallel encoding processes")
    parser.add_argument("--raw", type=int, default=0, help="extra unlabeled clips in raw/ (the labeling demo's input)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching corpus exists")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        manifest, written = _build(args.out_dir, args.clips, args.seed, args.workers, args.force, args.raw)
    except VastError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"demo corpus in {args.out_dir}: {manifest['num_clips']} clips "
        f"({manifest['num_train']} train, {manifest['num_test']} test)"
        + (f" and {manifest['num_raw']} raw" if manifest["num_raw"] else "") + ", "
        f"{manifest['total_seconds']:.0f} s of video, {written} files written, "
        f"{time.perf_counter() - started:.1f} s"
        + ("" if written else " (already built)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
