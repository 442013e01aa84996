"""EVA-CLIP vision tower: named sizes, the official release layout, tokens after the final norm."""

import copy

import pytest
import torch
from torch import nn

from vast.errors import ConfigError, DataError
from vast.models.checkpoints import load_weights
from vast.models.vision import (VISION_CONFIGS, VisionTower, create_vision_encoder, load_evaclip_vision,
                                resize_pos_embed)

SMALL = {"embed_dim": 32, "vision_cfg": {"image_size": 56, "layers": 2, "width": 64, "head_width": 16,
                                          "mlp_ratio": 4.3637, "patch_size": 14}}


def with_vision_cfg(**changes):
    config = copy.deepcopy(SMALL)
    config["vision_cfg"].update(changes)
    return config


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


def eva01_tokens(visual, images, heads, head_dim):
    """EVA01's forward written out: cls before pos_embed, q/v bias without k bias, optional layer scale."""
    x = visual.patch_embed(images)
    x = torch.cat([visual.cls_token.expand(len(images), -1, -1), x], dim=1) + visual.pos_embed
    for block in visual.blocks:
        attn = block.attn
        bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
        h = block.norm1(x)
        q, k, v = torch.nn.functional.linear(h, attn.qkv.weight, bias).unflatten(-1, (3, heads, head_dim)).permute(
            2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) * head_dim ** -0.5, dim=-1) @ v
        a = attn.proj(a.transpose(1, 2).flatten(2))
        x = x + (a if block.gamma_1 is None else block.gamma_1 * a)
        m = block.mlp(block.norm2(x))
        x = x + (m if block.gamma_2 is None else block.gamma_2 * m)
    return visual.norm(x)


def test_tokens_are_taken_after_the_final_norm_with_q_v_bias():
    torch.manual_seed(0)
    tower = create_vision_encoder(SMALL).eval()
    images = torch.randn(1, 3, 56, 56)
    torch.testing.assert_close(tower(images), eva01_tokens(tower.visual, images, 4, 16), atol=1e-5, rtol=1e-5)
    assert tower.visual.norm.eps == 1e-6 and tower.visual.blocks[0].norm1.eps == 1e-6
    assert tower.visual.blocks[0].mlp.fc1.out_features == int(64 * 4.3637)
    assert tower.visual.blocks[0].gamma_1 is None


def test_layer_scale_from_ls_init_value(tmp_path):
    torch.manual_seed(0)
    config = with_vision_cfg(ls_init_value=0.1)
    source = create_vision_encoder(config)
    assert torch.all(source.visual.blocks[1].gamma_2 == 0.1)
    for block in source.visual.blocks:  # trained values, not the initial ones
        block.gamma_1.data.uniform_(0.5, 2.0)
        block.gamma_2.data.uniform_(0.5, 2.0)
    official_release_file(tmp_path / "eva.pt", source)
    tower = load_evaclip_vision(tmp_path / "eva.pt", config)
    images = torch.randn(1, 3, 56, 56)
    torch.testing.assert_close(tower(images), eva01_tokens(source.visual, images, 4, 16), atol=1e-5, rtol=1e-5)
    # EVA-CLIP builds no layer scale for a zero ls_init_value
    assert create_vision_encoder(with_vision_cfg(ls_init_value=0)).visual.blocks[0].gamma_1 is None


def test_mlp_width_is_int_of_width_times_ratio():
    # 112 * 4.3637 = 488.7: a ratio recomputed as 488 / 112 would build 487 on this width
    tower = create_vision_encoder(with_vision_cfg(width=112, head_width=56))
    assert tower.visual.blocks[0].mlp.fc1.out_features == 488


def test_pos_embed_bilinear_halving_averages_each_2x2_block():
    torch.manual_seed(0)
    grid = torch.randn(4, 4, 3)
    pos_embed = torch.cat([torch.randn(1, 1, 3), grid.reshape(1, 16, 3)], dim=1)
    resized = resize_pos_embed(pos_embed, 2, mode="bilinear")
    assert resized.shape == (1, 5, 3)
    torch.testing.assert_close(resized[:, 0], pos_embed[:, 0], rtol=0, atol=0)
    # half-pixel centres (align_corners=False), no antialiasing: each output is its 2x2 block's mean
    torch.testing.assert_close(resized[0, 1:].reshape(2, 2, 3), grid.reshape(2, 2, 2, 2, 3).mean(dim=(1, 3)))


def test_pos_embed_bicubic_uses_four_taps_of_the_keys_kernel():
    torch.manual_seed(0)
    grid = torch.randn(8, 8)
    pos_embed = torch.cat([torch.zeros(1, 1, 1), grid.reshape(1, 64, 1)], dim=1)
    resized = resize_pos_embed(pos_embed, 4)[0, 1:, 0].reshape(4, 4)
    # output (1, 1) samples input (2.5, 2.5): the cubic kernel with a = -0.75 at distances 1.5, 0.5, 0.5, 1.5
    # over rows and columns 1..4; an antialiased resize would spread over 8 taps instead
    taps = torch.tensor([-0.09375, 0.59375, 0.59375, -0.09375])
    torch.testing.assert_close(resized[1, 1], taps @ grid[1:5, 1:5] @ taps)


def test_pos_embed_resize_keeps_dtype_and_square_grids_only():
    pos_embed = torch.randn(1, 17, 8, dtype=torch.float16)
    assert resize_pos_embed(pos_embed, 6).dtype == torch.float16  # rounded as the release file's loader rounds
    assert resize_pos_embed(pos_embed, 4) is pos_embed
    with pytest.raises(DataError, match="not a square grid"):
        resize_pos_embed(torch.randn(1, 1 + 12, 8), 4)


@pytest.mark.parametrize("image_size, grid", [(84, 6), (42, 3)])
def test_position_embeddings_interpolate_to_another_image_size(tmp_path, image_size, grid):
    torch.manual_seed(0)
    state = official_release_file(tmp_path / "eva.pt", create_vision_encoder(SMALL))
    tower = load_evaclip_vision(tmp_path / "eva.pt", SMALL, image_size=image_size)
    assert tower(torch.randn(1, 3, image_size, image_size)).shape == (1, 1 + grid * grid, 64)
    expected = resize_pos_embed(state["visual.pos_embed"], grid)
    torch.testing.assert_close(tower.visual.pos_embed.data, expected, rtol=0, atol=0)
    torch.testing.assert_close(tower.visual.pos_embed.data[:, 0], state["visual.pos_embed"][:, 0], rtol=0, atol=0)


def test_wrapped_release_file_and_another_patch_size(tmp_path):
    state = official_release_file(tmp_path / "eva.pt", create_vision_encoder(SMALL))
    torch.save({"module": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pt")
    assert load_evaclip_vision(tmp_path / "wrapped.pt", SMALL).num_tokens == 17
    # the patch kernel is resampled to the tower's patch size, as EVA-CLIP's loader does
    tower = load_evaclip_vision(tmp_path / "eva.pt", with_vision_cfg(patch_size=16), image_size=64)
    assert tower.visual.patch_embed.proj.weight.shape[-2:] == (16, 16)
    assert tower(torch.randn(1, 3, 64, 64)).shape == (1, 17, 64)
    with pytest.raises(DataError, match="shapes"):
        load_evaclip_vision(tmp_path / "eva.pt", with_vision_cfg(width=96, head_width=16))


def test_vast_checkpoint_pos_embed_is_resized_bilinearly():
    torch.manual_seed(0)
    source = VisionTower(SMALL)  # grid 4
    state = {f"vision_encoder.{k}": v for k, v in source.state_dict().items()}
    model = nn.Module()
    model.vision_encoder = VisionTower(SMALL, image_size=28)  # grid 2
    load_weights(model, state, "test")
    pos_embed = source.visual.pos_embed.data
    blocks = pos_embed[0, 1:].reshape(2, 2, 2, 2, -1).mean(dim=(1, 3)).reshape(4, -1)
    torch.testing.assert_close(model.vision_encoder.visual.pos_embed.data[0], torch.cat([pos_embed[0, :1], blocks]))


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
    for key in ("global_average_pool", "timm_model_name", "subln", "naiveswiglu", "postnorm"):
        with pytest.raises(ConfigError, match=key):
            create_vision_encoder(with_vision_cfg(**{key: True}))
    with pytest.raises(ConfigError, match="ResNet"):
        create_vision_encoder(with_vision_cfg(layers=[3, 4, 6, 3]))
    with pytest.raises(ConfigError, match="multiple of head_width"):
        create_vision_encoder(with_vision_cfg(head_width=24))
    with pytest.raises(ConfigError, match="square"):
        create_vision_encoder(with_vision_cfg(image_size=[56, 42]))
    assert create_vision_encoder(with_vision_cfg(image_size=[56, 56])).num_tokens == 17
