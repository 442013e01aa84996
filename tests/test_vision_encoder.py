"""EVA-CLIP vision tower: named sizes, the official release layout, tokens after the final norm."""

import pytest
import torch

from vast.errors import ConfigError, DataError
from vast.models.vision import VISION_CONFIGS, create_vision_encoder, load_evaclip_vision

SMALL = {"embed_dim": 32, "vision_cfg": {"image_size": 56, "layers": 2, "width": 64, "head_width": 16,
                                          "mlp_ratio": 4.3637, "patch_size": 14}}


def official_release_file(path, tower):
    """A flat state dict as EVA-CLIP releases it: `visual.*`, an unused text tower and logit_scale."""
    state = {f"visual.{k[len('visual.'):]}": v.clone() for k, v in tower.state_dict().items()}
    state["text.token_embedding.weight"] = torch.randn(10, 32)
    state["text.transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(96, 32)
    state["logit_scale"] = torch.tensor(4.6)
    torch.save(state, path)
    return state


def test_official_layout_loads_and_text_tower_is_dropped(tmp_path):
    torch.manual_seed(0)
    source = create_vision_encoder(SMALL)
    state = official_release_file(tmp_path / "eva.pt", source)
    assert "visual.blocks.0.attn.q_bias" in state and "visual.blocks.0.attn.qkv.bias" not in state
    tower = load_evaclip_vision(tmp_path / "eva.pt", SMALL)
    assert not tower.training
    assert not any(k.startswith(("text", "visual.text")) for k in tower.state_dict())
    images = torch.randn(2, 3, 56, 56)
    tokens = tower(images)
    assert tokens.shape == (2, 1 + 16, 64)
    torch.testing.assert_close(tokens, source.eval()(images))


def test_tokens_are_taken_after_the_final_norm_with_q_v_bias():
    torch.manual_seed(0)
    tower = create_vision_encoder(SMALL).eval()
    visual = tower.visual
    images = torch.randn(1, 3, 56, 56)
    x = visual.patch_embed(images)
    x = torch.cat([visual.cls_token.expand(1, -1, -1), x], dim=1) + visual.pos_embed  # cls before pos_embed
    for block in visual.blocks:
        attn = block.attn
        bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])  # EVA01: no k bias
        h = block.norm1(x)
        q, k, v = torch.nn.functional.linear(h, attn.qkv.weight, bias).unflatten(-1, (3, 4, 16)).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) * 16 ** -0.5, dim=-1) @ v
        x = x + attn.proj(a.transpose(1, 2).flatten(2))
        x = x + block.mlp(block.norm2(x))
    expected = visual.norm(x)
    torch.testing.assert_close(tower(images), expected, atol=1e-5, rtol=1e-5)
    assert visual.norm.eps == 1e-6
    assert visual.blocks[0].mlp.fc1.out_features == int(64 * 4.3637)


def test_position_embeddings_interpolate_to_another_image_size(tmp_path):
    official_release_file(tmp_path / "eva.pt", create_vision_encoder(SMALL))
    tower = load_evaclip_vision(tmp_path / "eva.pt", SMALL, image_size=84)
    assert tower(torch.randn(1, 3, 84, 84)).shape == (1, 1 + 36, 64)


def test_giant_size_on_meta_device():
    with torch.device("meta"):
        tower = create_vision_encoder("evaclip01_giant")
    assert VISION_CONFIGS["evaclip01_giant"]["vision_cfg"]["width"] == 1408
    params = sum(p.numel() for p in tower.parameters())
    assert 1.0e9 < params < 1.02e9  # EVA01-CLIP-g visual tower incl. its 1408->1024 head
    assert tower.visual.blocks[0].mlp.fc1.out_features == 6144 and len(tower.visual.blocks) == 40
    assert tower.num_tokens == 257


def test_errors():
    with pytest.raises(ConfigError, match="neither a known name"):
        create_vision_encoder("eva_huge")
    with pytest.raises(DataError, match="pretrained_weights/clip"):
        load_evaclip_vision("/nonexistent/EVA01_CLIP_g_14_psz14_s11B.pt")
    with pytest.raises(ConfigError, match="rope"):
        create_vision_encoder({"vision_cfg": {"layers": 1, "width": 64, "rope": True}})
