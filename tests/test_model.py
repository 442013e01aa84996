"""The VAST model: full-size architecture on the meta device, checkpoint key layout, groups as data."""

import pytest
import torch

from vast.config import load_config
from vast.models.checkpoints import load_weights, read_checkpoint, atomic_save
from vast.models.vast import VAST
from vast.tasks import ModalityGroup

from conftest import ROOT

FULL_SIZE = {"vision_encoder_type": "evaclip01_giant", "audio_encoder_type": "beats_iter3",
             "multimodal_encoder_type": "bert_base_uncased", "vision_resolution": 224, "contra_dim": 512,
             "max_vision_sample_num": 8, "max_audio_sample_num": 1}


def model_cfg(**overrides):
    config = load_config(ROOT / "config/vast/demo/retrieval-demo.json")
    cfg = dict(config.model_cfg)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return VAST(model_cfg()).eval()


def test_full_size_architecture_on_meta_device():
    cfg = model_cfg(**FULL_SIZE, text_encoder_weights="minilm_l6")  # tokenizer only: same vocabulary
    with torch.device("meta"):
        model = VAST(cfg)
    total = sum(p.numel() for p in model.parameters())
    # EVA01-g (1.01B) + BEATs (90M) + BERT-base with cross-attention (138M) + heads: the paper's ~1.3B
    assert 1.2e9 < total < 1.3e9, total
    keys = model.state_dict().keys()
    for family in ("vision_encoder.visual.blocks.39.attn.q_bias", "audio_encoder.encoder.layers.11.self_attn.grep_a",
                   "multimodal_encoder.bert.encoder.layer.11.crossattention.self.query.weight",
                   "multimodal_encoder.cls.predictions.decoder.weight", "contra_head_t.linear.weight",
                   "contra_head_vas.weight", "contra_head_vas.bias", "itm_head.linear2.weight",
                   "hidden_trans_vision_multimodal.1.weight", "vision_frame_embedding", "audio_type_embeddings",
                   "subtitle_type_embeddings", "contra_temp"):
        assert family in keys, family
    assert model.vision_frame_embedding.shape == (1, 8, 768)


def test_groups_are_data(tiny):
    b, f, c = 2, 3, 2
    vision = torch.randn(b, f, 3, 64, 64)
    audio = torch.randn(b, c, 256, 64)
    with torch.no_grad():
        media = tiny.encode_media(set(ModalityGroup.parse("tvas").modalities), vision, audio, [" hello", ""])
        for name in ("tv", "ta", "tvs", "tva", "tvas"):
            group = ModalityGroup.parse(name)
            feats = tiny.condition_features(media, group)
            assert feats.shape == (b, 128)
            torch.testing.assert_close(feats.norm(dim=-1), torch.ones(b))
        memory, mask = tiny.fusion_memory(media, ModalityGroup.parse("tvas"))
    vision_tokens = f * (1 + (64 // 16) ** 2)  # 3 frames x (cls + 4x4 patches)
    audio_tokens = c * 16 * 4  # 2 clips x (256/16 x 64/16) patches
    assert memory.shape == (b, vision_tokens + audio_tokens + tiny.max_subtitle_len, tiny.hidden_size)
    assert mask is None  # the original attends to subtitle padding too; masking it is opt-in
    with pytest.raises(Exception, match="omni_contra_groups"):
        tiny.condition_features(media, ModalityGroup.parse("tas"))


def test_frame_embedding_interpolates_to_more_frames(tiny):
    with torch.no_grad():
        media = tiny.encode_media(set(ModalityGroup.parse("tv").modalities), torch.randn(1, 8, 3, 64, 64))
        memory, _ = tiny.fusion_memory(media, ModalityGroup.parse("tv"))
    assert memory.shape[1] == 8 * tiny.vision_encoder.num_tokens


def test_checkpoint_round_trip_and_original_layout(tiny, tmp_path):
    state = tiny.state_dict()
    original = dict(state)
    original["vision_encoder.text.token_embedding.weight"] = torch.zeros(3, 3)  # the unused EVA text tower
    original["vision_encoder.logit_scale"] = torch.tensor(1.0)
    original["vision_frame_embedding"] = torch.randn(1, 8, tiny.hidden_size)  # trained with 8 frames
    path = tmp_path / "model_step_7.pt"
    atomic_save({f"module.{k}": v for k, v in original.items()}, path)
    fresh = VAST(model_cfg())
    missing, unexpected = load_weights(fresh, read_checkpoint(path))
    assert not missing and not unexpected
    assert fresh.vision_frame_embedding.shape == tiny.vision_frame_embedding.shape
    # nearest resize from 8 to 4 slots keeps slots 0, 2, 4, 6
    torch.testing.assert_close(fresh.vision_frame_embedding[0], original["vision_frame_embedding"][0, ::2])
    torch.testing.assert_close(fresh.itm_head.linear1.weight, tiny.itm_head.linear1.weight)



def evaclip_text_tower_keys(layers=12) -> dict[str, tuple]:
    """The EVA01-CLIP-g/14 text tower as the release stores it (open_clip layout, width 768, 12 layers)."""
    width, vocab, context, embed = 768, 49408, 77, 1024
    keys = {"text.token_embedding.weight": (vocab, width), "text.positional_embedding": (context, width),
            "text.ln_final.weight": (width,), "text.ln_final.bias": (width,), "text.text_projection": (width, embed),
            "text.attn_mask": (context, context), "logit_scale": ()}
    for i in range(layers):
        block = f"text.transformer.resblocks.{i}."
        keys.update({block + "attn.in_proj_weight": (3 * width, width), block + "attn.in_proj_bias": (3 * width,),
                     block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
                     block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
                     block + "mlp.c_fc.weight": (4 * width, width), block + "mlp.c_fc.bias": (4 * width,),
                     block + "mlp.c_proj.weight": (width, 4 * width), block + "mlp.c_proj.bias": (width,),
                     block + "ln_2.weight": (width,), block + "ln_2.bias": (width,)})
    return keys


def test_original_full_size_key_set_maps_with_no_missing_key():
    """An original full-size checkpoint = our keys + the EVA text tower and logit scale, which are
    the only keys dropped; loading it leaves nothing missing."""
    cfg = model_cfg(**FULL_SIZE, text_encoder_weights="minilm_l6")
    with torch.device("meta"):
        model = VAST(cfg)
    original = {k: torch.empty(v.shape, device="meta") for k, v in model.state_dict().items()}
    extra = {"vision_encoder." + k: torch.empty(shape, device="meta") for k, shape in evaclip_text_tower_keys().items()}
    original.update(extra)
    params = sum(v.numel() for k, v in original.items() if not k.endswith(("attn_mask", "decoder.weight", "decoder.bias")))
    assert len(original) == 1287, len(original)
    assert 1.35e9 < params < 1.39e9, params  # the paper's model with EVA's unused text tower
    missing, unexpected = load_weights(model, original, "original layout")
    assert missing == [] and unexpected == []
    from vast.models.checkpoints import DROPPED_PREFIXES

    assert {k for k in original if k.startswith(DROPPED_PREFIXES)} == set(extra)
