"""`vast.load_model` and the inference API (embed_text, embed, match, caption, answer)."""

import json

import pytest
import torch

import vast
from vast.errors import ConfigError, DataError
from vast.models.checkpoints import atomic_save
from vast.models.generation import GenerationConfig
from vast.models.vast import VAST
from vast.tasks import ModalityGroup

from test_model import model_cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as training writes it: log/hps.json + ckpt/model_step_<N>.pt (two steps)."""
    torch.manual_seed(3)
    cfg = model_cfg(max_vision_sample_num=3)
    model = VAST(cfg).eval()
    root = tmp_path_factory.mktemp("run")
    (root / "log").mkdir()
    (root / "log" / "hps.json").write_text(json.dumps({"run_cfg": {}, "model_cfg": {**cfg, "model_type": "vast"}}))
    atomic_save({k: torch.zeros_like(v) for k, v in model.state_dict().items()}, root / "ckpt" / "model_step_2.pt")
    atomic_save(model.state_dict(), root / "ckpt" / "model_step_10.pt")
    return root, model


@pytest.fixture(scope="module")
def clips():
    torch.manual_seed(4)
    return {"vision": torch.randn(2, 3, 3, 64, 64), "audio": torch.randn(2, 1, 256, 64),
            "subtitles": ["open the window", "wash the car"]}


def test_load_model_from_run_folder_and_from_file(run_dir, clips):
    root, reference = run_dir
    loaded = vast.load_model(root)
    assert not loaded.training and loaded.vision_frame_embedding.shape[1] == 3
    from_file = vast.load_model(root / "ckpt" / "model_step_10.pt")
    for model in (loaded, from_file):
        torch.testing.assert_close(model.embed("tvas", **clips), reference.embed("tvas", **clips))
    zeros = vast.load_model(root / "ckpt" / "model_step_2.pt")
    assert zeros.contra_temp.item() == 0.0  # the file asked for, not the newest


def test_load_model_errors_are_one_line(run_dir, tmp_path):
    root, _ = run_dir
    with pytest.raises(DataError, match="model not found"):
        vast.load_model(tmp_path / "missing")
    with pytest.raises(ConfigError, match="unknown model_cfg key.*beam_size"):
        vast.load_model(root, beam_sise=3)
    with pytest.raises(DataError, match="no ckpt/model_step"):
        vast.load_model(tmp_path)


def test_overrides_apply(run_dir):
    root, _ = run_dir
    model = vast.load_model(root, max_caption_len=7, mask_subtitle_padding=True)
    assert model.max_caption_len == 7 and model.mask_subtitle_padding


def test_embeddings_are_normalised_and_agree_with_features(run_dir, clips):
    _, model = run_dir
    texts = ["a red circle moves", "someone says door", "a low hum"]
    text = model.embed_text(texts)
    assert text.shape == (3, 128)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    for group in ("tv", "ta", "tvs", "tvas"):
        clip = model.embed(group, **clips)
        assert clip.shape == (2, 128)
        torch.testing.assert_close(clip.norm(dim=-1), torch.ones(2))
    with pytest.raises(ConfigError, match="vision"):
        model.embed("tv", audio=clips["audio"])


def test_match_scores_every_text_against_every_clip(run_dir, clips):
    _, model = run_dir
    texts = ["a red circle moves", "someone says door", "a low hum"]
    scores = model.match(texts, "tvas", **clips)
    assert scores.shape == (3, 2) and ((scores >= 0) & (scores <= 1)).all()
    with torch.no_grad():
        media = model.encode_media(ModalityGroup.parse("tvas").modalities, clips["vision"], clips["audio"], clips["subtitles"])
        memory, _ = model.fusion_memory(media, ModalityGroup.parse("tvas"))
        one = model.match_logits(model.tokenize([texts[1]]), memory[1:2]).softmax(-1)[0, 1]
    torch.testing.assert_close(scores[1, 1], one, atol=1e-5, rtol=1e-5)


def test_caption_and_answer_return_strings(run_dir, clips):
    _, model = run_dir
    captions = model.caption("tvas", **clips, max_len=6)
    beams = model.caption("tv", vision=clips["vision"], beam_size=3, max_len=6)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions) and len(beams) == 2
    with torch.no_grad():
        media = model.encode_media(ModalityGroup.parse("tvas").modalities, clips["vision"], clips["audio"], clips["subtitles"])
        direct = model.generate_text(media, ModalityGroup.parse("tvas"), GenerationConfig(max_len=6))
    assert captions == [d[0] for d in direct]
    answers = model.answer(["what color is the circle", "what word is spoken"], "tvas", **clips)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_load_clips_decodes_files_for_the_api(run_dir, demo_corpus):
    _, model = run_dir
    videos = sorted((demo_corpus / "videos").glob("*.mp4"))[:2]
    vision, audio = model.load_clips(videos, videos, vision_sample_num=3)
    assert vision.shape == (2, 3, 3, 64, 64) and audio.shape == (2, 1, 256, 64)
    again, _ = model.load_clips(videos, vision_sample_num=3)
    torch.testing.assert_close(vision, again)  # evaluation sampling: the same frames every time
    assert model.embed("tva", vision=vision, audio=audio).shape == (2, 128)
    with pytest.raises(DataError):
        model.load_clips([demo_corpus / "videos" / "missing.mp4"])
