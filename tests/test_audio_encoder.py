"""BEATs audio encoder: official checkpoint layout, the maths checked against hand-written formulas, API."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchaudio

from vast.errors import ConfigError, DataError
from vast.models.audio import (
    AUDIO_CONFIGS,
    BEATs,
    BEATsConfig,
    create_audio_encoder,
    load_beats,
    relative_position_bucket,
)

# A small cfg in the official format (every key the release files store, plus one this code ignores).
SMALL_CFG = {
    "input_patch_size": 16, "embed_dim": 32, "conv_bias": False, "encoder_layers": 3, "encoder_embed_dim": 48,
    "encoder_ffn_embed_dim": 96, "encoder_attention_heads": 4, "activation_fn": "gelu",
    "layer_wise_gradient_decay_ratio": 0.6, "layer_norm_first": False, "deep_norm": True, "dropout": 0.0,
    "attention_dropout": 0.0, "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "dropout_input": 0.0,
    "conv_pos": 8, "conv_pos_groups": 4, "relative_position_embedding": True, "num_buckets": 32,
    "max_distance": 64, "gru_rel_pos": True, "finetuned_model": True, "predictor_dropout": 0.0,
    "predictor_class": 5, "some_training_only_key": "ignored",
}


def official_state_dict(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the reference's key names and shapes, written out by hand from its layout."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g) * 0.1  # noqa: E731
    d, e, f, h, k = (cfg[key] for key in ("encoder_embed_dim", "embed_dim", "encoder_ffn_embed_dim",
                                          "encoder_attention_heads", "conv_pos"))
    p = cfg["input_patch_size"]
    sd = {
        "patch_embedding.weight": rand(e, 1, p, p),
        "layer_norm.weight": 1 + rand(e), "layer_norm.bias": rand(e),
        "post_extract_proj.weight": rand(d, e), "post_extract_proj.bias": rand(d),
        "encoder.pos_conv.0.weight_g": 1 + rand(1, 1, k).abs(),
        "encoder.pos_conv.0.weight_v": rand(d, d // cfg["conv_pos_groups"], k),
        "encoder.pos_conv.0.bias": rand(d),
        "encoder.layer_norm.weight": 1 + rand(d), "encoder.layer_norm.bias": rand(d),
        "predictor.weight": rand(cfg["predictor_class"], d), "predictor.bias": rand(cfg["predictor_class"]),
    }
    # One table shared by all layers: the reference assigns layer 0's module to every layer, so its state
    # dict repeats the same tensor under each layer's key.
    table = rand(cfg["num_buckets"], h)
    for i in range(cfg["encoder_layers"]):
        pre = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[pre + f"self_attn.{proj}.weight"] = rand(d, d)
            sd[pre + f"self_attn.{proj}.bias"] = rand(d)
        sd[pre + "self_attn.relative_attention_bias.weight"] = table
        sd[pre + "self_attn.grep_linear.weight"] = rand(8, d // h)
        sd[pre + "self_attn.grep_linear.bias"] = rand(8)
        sd[pre + "self_attn.grep_a"] = 1 + rand(1, h, 1, 1)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            sd[pre + f"{norm}.weight"] = 1 + rand(d)
            sd[pre + f"{norm}.bias"] = rand(d)
        sd[pre + "fc1.weight"], sd[pre + "fc1.bias"] = rand(f, d), rand(f)
        sd[pre + "fc2.weight"], sd[pre + "fc2.bias"] = rand(d, f), rand(d)
    return sd


@pytest.fixture
def official_checkpoint(tmp_path):
    state_dict = official_state_dict(SMALL_CFG)
    path = tmp_path / "BEATs_small.pt"
    torch.save({"cfg": SMALL_CFG, "model": state_dict}, path)
    return path, state_dict


def tiny(**overrides) -> BEATs:
    """beats_tiny without randomness in training mode."""
    torch.manual_seed(0)
    cfg = {**AUDIO_CONFIGS["beats_tiny"], "encoder_layerdrop": 0.0, "layer_wise_gradient_decay_ratio": 1.0, **overrides}
    return create_audio_encoder(cfg)


def test_official_checkpoint_loads_strictly_and_saves_the_same_keys(official_checkpoint, tmp_path):
    path, official = official_checkpoint
    model = load_beats(path)
    assert not model.training
    assert model.cfg.to_dict() == {k: v for k, v in SMALL_CFG.items() if k != "some_training_only_key"}
    saved = model.state_dict()
    assert set(saved) == set(official)
    for key, value in official.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=0, msg=key)
    # One table, not three copies.
    layers = model.encoder.layers
    assert layers[1].self_attn.relative_attention_bias is layers[0].self_attn.relative_attention_bias
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.numel() for k, v in official.items() if "relative_attention_bias" not in k or ".layers.0." in k
    )

    # Our state dict written back in the official format reloads into the same function.
    fbank = torch.randn(2, 64, 32)
    resaved = tmp_path / "resaved.pt"
    torch.save({"cfg": model.cfg.to_dict(), "model": saved}, resaved)
    torch.testing.assert_close(load_beats(resaved)(fbank), model(fbank), rtol=0, atol=0)

    # A file that keeps the shared table only under layer 0 loads to the same model.
    deduplicated = {k: v for k, v in official.items() if "relative_attention_bias" not in k or ".layers.0." in k}
    torch.save({"cfg": SMALL_CFG, "model": deduplicated}, resaved)
    torch.testing.assert_close(load_beats(resaved)(fbank), model(fbank), rtol=0, atol=0)


def test_load_beats_rejects_missing_file_and_mismatched_weights(official_checkpoint, tmp_path):
    missing = tmp_path / "nowhere" / "BEATs_iter3_plus_AS2M.pt"
    with pytest.raises(DataError, match="pretrained_weights/beats/") as info:
        load_beats(missing)
    assert str(missing) in str(info.value)

    path, official = official_checkpoint
    bad = tmp_path / "bad.pt"
    torch.save({"cfg": {**SMALL_CFG, "encoder_layers": 2}, "model": official}, bad)
    with pytest.raises(DataError, match="unexpected"):
        load_beats(bad)
    torch.save({"cfg": {**SMALL_CFG, "encoder_ffn_embed_dim": 64}, "model": official}, bad)
    with pytest.raises(DataError, match="do not match"):
        load_beats(bad)
    torch.save(official, bad)
    with pytest.raises(DataError, match="'cfg' and 'model'"):
        load_beats(bad)


def test_relative_position_buckets_follow_the_t5_formula():
    # 64 buckets: 32 per direction, offsets below 16 exact, then 16 + floor(log(d/16) / log(128/16) * 16).
    offsets = torch.tensor([0, -1, 1, -15, 15, -16, 16, -32, 32, -64, 64, -127, 127, -128, 128, -1000, 1000])
    expected = [0, 1, 33, 15, 47, 16, 48, 21, 53, 26, 58, 31, 63, 31, 63, 31, 63]
    assert relative_position_bucket(offsets, num_buckets=64, max_distance=128).tolist() == expected
    for d in (17, 40, 100):
        assert relative_position_bucket(torch.tensor([d]), 64, 128).item() == 32 + 16 + int(
            math.log(d / 16) / math.log(8) * 16
        )


def _t5_bucket(offset: int, num_buckets: int, max_distance: int) -> int:
    """Bucket of one (key - query) offset: a half of the buckets per sign, a half of those exact, then log-spaced."""
    half = num_buckets // 2
    exact = half // 2
    base, distance = (half if offset > 0 else 0), abs(offset)
    if distance < exact:
        return base + distance
    spread = int(math.log(distance / exact) / math.log(max_distance / exact) * (half - exact))
    return base + min(half - 1, exact + spread)


def functional_beats(sd: dict, cfg: dict, fbank: torch.Tensor) -> torch.Tensor:
    """BEATs (post-LN, DeepNorm, gated relative bias) on the raw tensors of an official state dict, in plain ops."""
    b = fbank.shape[0]
    d, h, num_layers = cfg["encoder_embed_dim"], cfg["encoder_attention_heads"], cfg["encoder_layers"]
    x = F.conv2d(fbank[:, None], sd["patch_embedding.weight"], stride=cfg["input_patch_size"])  # [B, E, T/p, M/p]
    x = x.flatten(2).transpose(1, 2)  # token index = time_patch * (M/p) + freq_patch
    x = F.layer_norm(x, x.shape[-1:], sd["layer_norm.weight"], sd["layer_norm.bias"], eps=1e-5)
    x = F.linear(x, sd["post_extract_proj.weight"], sd["post_extract_proj.bias"])
    g, v = sd["encoder.pos_conv.0.weight_g"], sd["encoder.pos_conv.0.weight_v"]
    weight = g * v / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()  # weight norm: one norm per kernel tap
    conv = F.conv1d(x.transpose(1, 2), weight, sd["encoder.pos_conv.0.bias"], padding=v.shape[-1] // 2,
                    groups=cfg["conv_pos_groups"])
    x = x + F.gelu(conv[..., : x.shape[1]]).transpose(1, 2)  # an even kernel yields one frame too many
    x = F.layer_norm(x, (d,), sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"], eps=1e-5)
    t = x.shape[1]
    buckets = torch.tensor([[_t5_bucket(j - i, cfg["num_buckets"], cfg["max_distance"]) for j in range(t)]
                            for i in range(t)])
    bias = sd["encoder.layers.0.self_attn.relative_attention_bias.weight"][buckets].permute(2, 0, 1)  # [H, T, T]
    alpha = (2 * num_layers) ** 0.25
    for i in range(num_layers):
        p = lambda name: sd[f"encoder.layers.{i}.{name}"]  # noqa: E731
        linear = lambda y, name: F.linear(y, p(name + ".weight"), p(name + ".bias"))  # noqa: E731
        q, k, val = (linear(x, f"self_attn.{n}_proj").view(b, t, h, d // h).transpose(1, 2) for n in "qkv")
        g8 = linear(q, "self_attn.grep_linear")  # [B, H, T, 8], from the unscaled query
        gate_a, gate_b = torch.sigmoid(g8[..., :4].sum(-1, keepdim=True)), torch.sigmoid(g8[..., 4:].sum(-1, keepdim=True))
        gate = gate_a * (gate_b * p("self_attn.grep_a") - 1.0) + 2.0  # [B, H, T, 1]
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        # The reference shifts each row by its max (and works at 1/32 scale) for fp16 headroom: softmax is unchanged.
        scores = scores - scores.amax(-1, keepdim=True)
        mixed = (torch.softmax(scores + gate * bias, dim=-1) @ val).transpose(1, 2).reshape(b, t, d)
        x = F.layer_norm(alpha * x + linear(mixed, "self_attn.out_proj"), (d,), p("self_attn_layer_norm.weight"),
                         p("self_attn_layer_norm.bias"), eps=1e-5)
        ffn = linear(F.gelu(linear(x, "fc1")), "fc2")
        x = F.layer_norm(alpha * x + ffn, (d,), p("final_layer_norm.weight"), p("final_layer_norm.bias"), eps=1e-5)
    return x


def test_official_weights_compute_beats_written_out_in_plain_ops(official_checkpoint):
    path, official = official_checkpoint
    model = load_beats(path)
    torch.manual_seed(3)
    # 520 frames: 32 time patches (the last 8 frames are cropped) x 4 mel patches = 128 tokens, so offsets
    # run past max_distance (64) into the shared last bucket.
    fbank = torch.randn(2, 520, 64)
    with torch.no_grad():
        tokens = model(fbank)
        assert tokens.shape == (2, 128, SMALL_CFG["encoder_embed_dim"])
        torch.testing.assert_close(tokens, functional_beats(official, SMALL_CFG, fbank), rtol=0, atol=1e-5)
        torch.testing.assert_close(model(fbank[:, :512]), tokens, rtol=0, atol=0)


def _layer_input(model: BEATs, length: int = 12, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, length, model.width)


def test_plain_layer_equals_a_hand_written_post_ln_transformer_layer():
    model = tiny(deep_norm=False, relative_position_embedding=False, gru_rel_pos=False).eval()
    layer = model.encoder.layers[0]
    x = _layer_input(model)
    attn, heads = layer.self_attn, 4
    b, t, d = x.shape
    split = lambda y: y.view(b, t, heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    mixed = attn.out_proj((probs @ v).transpose(1, 2).reshape(b, t, d))
    h = F.layer_norm(x + mixed, (d,), layer.self_attn_layer_norm.weight, layer.self_attn_layer_norm.bias)
    ffn = layer.fc2(F.gelu(layer.fc1(h)))
    expected = F.layer_norm(h + ffn, (d,), layer.final_layer_norm.weight, layer.final_layer_norm.bias)
    torch.testing.assert_close(layer(x, None), expected, rtol=1e-5, atol=1e-5)


def test_gated_relative_bias_and_deep_norm_layer_equals_hand_written_maths():
    model = tiny().eval()
    for parameter in model.parameters():  # move away from the init's symmetric values (grep_a == 1)
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    layer, num_layers, heads = model.encoder.layers[1], 2, 4
    x = _layer_input(model, length=20)
    b, t, d = x.shape
    attn = layer.self_attn
    # Bucketed bias from the shared table, buckets computed one offset at a time with math.log.
    table = model.encoder.layers[0].self_attn.relative_attention_bias.weight  # [64, H]

    def bucket(offset: int) -> int:
        base, distance = (32 if offset > 0 else 0), abs(offset)
        if distance < 16:
            return base + distance
        return base + min(31, 16 + int(math.log(distance / 16) / math.log(128 / 16) * 16))

    buckets = torch.tensor([[bucket(j - i) for j in range(t)] for i in range(t)])
    position_bias = table[buckets].permute(2, 0, 1)  # [H, T, T]
    torch.testing.assert_close(attn.position_bias(t), position_bias)

    split = lambda y: y.view(b, t, heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
    # Gate from the unscaled query: sigmoid of the two 4-sums of grep_linear(q).
    g = attn.grep_linear(q)  # [B, H, T, 8]
    gate_a = torch.sigmoid(g[..., :4].sum(-1, keepdim=True))
    gate_b = torch.sigmoid(g[..., 4:].sum(-1, keepdim=True))
    gate = gate_a * (gate_b * attn.grep_a - 1.0) + 2.0  # [B, H, T, 1]
    logits = q @ k.transpose(-1, -2) * (d // heads) ** -0.5 + gate * position_bias
    mixed = attn.out_proj((torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(b, t, d))
    alpha = (2 * num_layers) ** 0.25
    h = F.layer_norm(x * alpha + mixed, (d,), layer.self_attn_layer_norm.weight, layer.self_attn_layer_norm.bias)
    ffn = layer.fc2(F.gelu(layer.fc1(h)))
    expected = F.layer_norm(h * alpha + ffn, (d,), layer.final_layer_norm.weight, layer.final_layer_norm.bias)
    torch.testing.assert_close(layer(x, position_bias), expected, rtol=1e-5, atol=1e-5)


def test_positional_conv_is_weight_normed_over_the_kernel_axis_and_drops_the_last_frame():
    model = tiny().eval()
    conv = model.encoder.pos_conv[0]
    with torch.no_grad():
        conv.weight_g.copy_(torch.rand_like(conv.weight_g) + 0.5)
    g, v = conv.weight_g, conv.weight_v  # [1, 1, K], [C, C/groups, K]
    kernel = v.shape[-1]
    norms = torch.stack([v[:, :, i].norm() for i in range(kernel)])  # one norm per kernel tap
    torch.testing.assert_close(conv.weight(), v * (g.flatten() / norms), rtol=1e-6, atol=1e-7)
    reference = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(128, 128, kernel, groups=4), dim=2)
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(g)
        reference.parametrizations.weight.original1.copy_(v)
    torch.testing.assert_close(conv.weight(), reference.weight, rtol=1e-6, atol=1e-7)

    x = torch.randn(2, 128, 30)  # [B, C, T]
    full = F.conv1d(x, conv.weight(), conv.bias, padding=kernel // 2, groups=4)
    assert full.shape[-1] == 31  # even kernel: one extra frame, which BEATs drops
    torch.testing.assert_close(model.encoder.pos_conv(x), F.gelu(full[..., :-1]))


@pytest.mark.parametrize("samples", [16000, 16000 + 123])  # 1 s, and a length that is no whole number of hops
def test_extract_features_equals_forward_on_normalised_kaldi_fbank(samples):
    model = tiny().eval()
    torch.manual_seed(2)
    waveform = 0.3 * torch.randn(2, samples)
    fbanks = [
        torchaudio.compliance.kaldi.fbank(w[None] * 32768, num_mel_bins=128, sample_frequency=16000,
                                          frame_length=25, frame_shift=10)
        for w in waveform
    ]
    fbank = (torch.stack(fbanks) - 15.41663) / (2 * 6.55582)  # [2, T, 128]
    frames = 1 + (samples - 400) // 160  # whole 25 ms windows every 10 ms; the tail is dropped
    assert fbank.shape[1] == frames
    with torch.no_grad():
        tokens = model.extract_features(waveform)
        torch.testing.assert_close(tokens, model(fbank), rtol=0, atol=0)
    assert tokens.shape == (2, (frames // 16) * 8, 128)


@pytest.mark.parametrize("melbins", [64, 128])
def test_tokens_are_time_major_patches(melbins):
    model = tiny().eval()
    fbank = torch.randn(2, 96, melbins)
    with torch.no_grad():
        tokens = model(fbank)
        patches = model.patch_embedding(fbank[:, None])  # [B, C, 6, M/16]
    assert tokens.shape == (2, 6 * melbins // 16, 128)
    # Token index = time_patch * (M/16) + freq_patch: check one against the conv output.
    token, time_patch, freq_patch = 7, 7 // (melbins // 16), 7 % (melbins // 16)
    expected = model.post_extract_proj(model.layer_norm(patches[:, :, time_patch, freq_patch]))
    with torch.no_grad():
        flat = model.post_extract_proj(model.layer_norm(patches.flatten(2).transpose(1, 2)))
    torch.testing.assert_close(flat[:, token], expected)


def test_forward_composes_front_end_positional_conv_and_layers_in_order():
    model = tiny().eval()
    fbank = torch.randn(1, 48, 64)
    with torch.no_grad():
        patches = model.patch_embedding(fbank[:, None]).flatten(2).transpose(1, 2)  # [1, 12, 64]
        x = model.post_extract_proj(model.layer_norm(patches))
        x = model.encoder.layer_norm(x + model.encoder.pos_conv(x.transpose(1, 2)).transpose(1, 2))
        bias = model.encoder.layers[0].self_attn.position_bias(x.shape[1])  # one bias for every layer
        for layer in model.encoder.layers:
            x = layer(x, bias)
        torch.testing.assert_close(model(fbank), x, rtol=0, atol=0)


def test_beats_iter3_builds_on_meta_with_the_base_size():
    with torch.device("meta"):
        model = create_audio_encoder("beats_iter3")
    assert all(p.is_meta for p in model.parameters())
    d, f, layers, heads, k = 768, 3072, 12, 12, 128
    per_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d + (d // heads * 8 + 8) + heads
    expected = (512 * 256 + 2 * 512 + 512 * d + d) + (d * d // 16 * k + k + d) + 2 * d + layers * per_layer + 320 * heads
    assert sum(p.numel() for p in model.parameters()) == expected == 90_311_792
    assert model.width == 768
    assert AUDIO_CONFIGS["beats"] == AUDIO_CONFIGS["beats_iter3"]
    assert model.cfg.layer_wise_gradient_decay_ratio == 0.6 and model.cfg.deep_norm and model.cfg.gru_rel_pos


def test_grad_checkpointing_gives_the_same_output_and_gradients():
    model = tiny().train()
    fbank = torch.randn(2, 64, 64)

    def run():
        model.zero_grad()
        out = model(fbank)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_out, plain_grads = run()
    model.set_grad_checkpointing(True)
    ckpt_out, ckpt_grads = run()
    torch.testing.assert_close(ckpt_out, plain_out)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, msg=name)


def test_layer_wise_gradient_decay_scales_gradients_once_per_layer_above():
    fbank = torch.randn(1, 32, 64)
    grads = {}
    for ratio in (1.0, 0.5):
        model = tiny(layer_wise_gradient_decay_ratio=ratio).train()
        out = model(fbank)
        out.sum().backward()
        grads[ratio] = {n: p.grad for n, p in model.named_parameters()}
        if ratio != 1.0:
            model.eval()
            torch.testing.assert_close(model(fbank), tiny().eval()(fbank))  # forward unchanged
    torch.testing.assert_close(grads[0.5]["encoder.layers.1.fc1.weight"], grads[1.0]["encoder.layers.1.fc1.weight"])
    torch.testing.assert_close(grads[0.5]["encoder.layers.0.fc1.weight"], 0.5 * grads[1.0]["encoder.layers.0.fc1.weight"])
    torch.testing.assert_close(grads[0.5]["patch_embedding.weight"], 0.25 * grads[1.0]["patch_embedding.weight"])


def test_create_audio_encoder_from_name_dict_json_and_checkpoint(official_checkpoint, tmp_path):
    assert create_audio_encoder("beats_tiny").cfg == BEATsConfig(AUDIO_CONFIGS["beats_tiny"])
    assert create_audio_encoder({"encoder_layers": 1}).cfg.encoder_layers == 1
    cfg_json = tmp_path / "beats.json"
    cfg_json.write_text(json.dumps(SMALL_CFG))
    assert create_audio_encoder(str(cfg_json)).cfg == BEATsConfig(SMALL_CFG)

    path, official = official_checkpoint
    from_checkpoint = create_audio_encoder(path)
    assert from_checkpoint.cfg == BEATsConfig(SMALL_CFG) and from_checkpoint.training
    assert not torch.equal(from_checkpoint.state_dict()["encoder.layers.0.fc1.weight"], official["encoder.layers.0.fc1.weight"])

    with pytest.raises(ConfigError, match="beats_tiny"):
        create_audio_encoder("beats_huge")


def test_config_keeps_official_keys_and_rejects_bad_values():
    cfg = BEATsConfig({"encoder_layers": 4, "unknown": 1, "dropout": 0})
    assert cfg.encoder_layers == 4 and cfg.dropout == 0.0 and "unknown" not in cfg.to_dict()
    assert BEATsConfig(cfg.to_dict()) == cfg
    assert BEATsConfig().to_dict()["input_patch_size"] == 16
    with pytest.raises(ConfigError, match="divisible"):
        BEATsConfig({"encoder_embed_dim": 100, "encoder_attention_heads": 12})
    with pytest.raises(ConfigError, match="activation_fn"):
        BEATsConfig({"activation_fn": "glu"})
    with pytest.raises(ConfigError, match="deep_norm"):
        BEATsConfig({"layer_norm_first": True})
