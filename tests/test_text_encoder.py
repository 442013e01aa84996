"""The text BERT: equals transformers' BERT, masks, key-value cache, HF weight loading, parameter names."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from torch import nn
from transformers import BertConfig as HFBertConfig
from transformers import BertModel as HFBertModel

from vast.errors import ConfigError, DataError
from vast.models.attention_masks import KVCache, self_attention_allowed
from vast.models.text import (
    TEXT_CONFIGS,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    create_text_encoder,
    load_bert,
    load_tokenizer,
    minilm_path,
)

SENTENCES = [
    "a man is playing a guitar on a stage while people dance",
    "a dog runs",
    "two children build a sandcastle at the beach next to the sea",
]
ATOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm_l6")


@pytest.fixture(scope="module")
def batch(tokenizer):
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert (encoded["attention_mask"] == 0).any()  # the batch has padding
    return encoded["input_ids"], encoded["attention_mask"]


@pytest.fixture(scope="module")
def fusion_bert() -> BertModel:
    """MiniLM weights + newly initialised cross-attention, eval mode."""
    torch.manual_seed(0)
    return load_bert(minilm_path(), add_cross_attention=True)


@pytest.fixture(scope="module")
def hf_decoder(fusion_bert) -> HFBertModel:
    """transformers' BERT in decoder mode (causal + cross-attention) holding our weights."""
    config = HFBertConfig.from_pretrained(minilm_path(), is_decoder=True, add_cross_attention=True,
                                          attn_implementation="eager")
    model = HFBertModel(config, add_pooling_layer=False)
    model.load_state_dict(fusion_bert.state_dict(), strict=True)
    return model.eval()


def memory_for(batch_size: int, length: int = 5, width: int = 384, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    memory = torch.randn(batch_size, length, width, generator=generator)  # [B, M, W]
    memory_mask = torch.ones(batch_size, length, dtype=torch.long)
    memory_mask[-1, -2:] = 0
    return memory, memory_mask


# --- equality with transformers ---------------------------------------------------------------

def test_text_only_matches_transformers(batch):
    input_ids, attention_mask = batch
    ours = load_bert(minilm_path())
    reference = HFBertModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        got = ours(input_ids, attention_mask).last_hidden_state
    assert got.shape == (3, input_ids.shape[1], 384)
    valid = attention_mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=ATOL, rtol=0)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)  # pad rows too: both mask keys only


def test_causal_with_cross_attention_matches_transformers_decoder(batch, fusion_bert, hf_decoder):
    input_ids, attention_mask = batch
    memory, memory_mask = memory_for(len(input_ids))
    with torch.no_grad():
        expected = hf_decoder(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=memory,
                              encoder_attention_mask=memory_mask, use_cache=False).last_hidden_state
        got = fusion_bert(input_ids, attention_mask, mask_mode="causal", encoder_hidden_states=memory,
                          encoder_attention_mask=memory_mask).last_hidden_state
    valid = attention_mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=ATOL, rtol=0)


def test_bidirectional_with_cross_attention_matches_transformers_layers(batch, fusion_bert, hf_decoder):
    # transformers only builds cross-attention in decoder mode, so run its layers with a key-padding mask.
    input_ids, attention_mask = batch
    memory, memory_mask = memory_for(len(input_ids))
    padding = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    memory_padding = (1.0 - memory_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    with torch.no_grad():
        expected = hf_decoder.embeddings(input_ids=input_ids)
        for layer in hf_decoder.encoder.layer:
            expected = layer(expected, padding, memory, encoder_attention_mask=memory_padding)
        got = fusion_bert(input_ids, attention_mask, encoder_hidden_states=memory,
                          encoder_attention_mask=memory_mask).last_hidden_state
        text_only = fusion_bert(input_ids, attention_mask).last_hidden_state
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert not torch.allclose(got, text_only, atol=1e-3)  # the memory matters when given


# --- masks ---------------------------------------------------------------------------------------

def test_mask_patterns():
    padding = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 1, 1]])
    prefix = self_attention_allowed(padding, 5, "prefix", prefix_lengths=torch.tensor([2, 3]))
    expected = torch.tensor([
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]],
        [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]],
    ], dtype=torch.bool)
    assert torch.equal(prefix, expected)
    causal = self_attention_allowed(padding, 5, "causal")
    assert torch.equal(causal[1], torch.tril(torch.ones(5, 5, dtype=torch.bool)) & padding[1].bool())
    bidirectional = self_attention_allowed(padding, 5, "bidirectional")
    assert torch.equal(bidirectional[1], padding[1].bool().expand(5, 5))
    cached = self_attention_allowed(None, 2, "causal", past_length=3)  # queries at positions 3 and 4
    assert torch.equal(cached[0], torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))
    with pytest.raises(ValueError, match="expected 5"):
        self_attention_allowed(padding[:, :4], 2, "causal", past_length=3)
    with pytest.raises(ValueError, match="mask_mode"):
        self_attention_allowed(padding, 5, "sideways")


def test_prefix_mode_dependencies(tokenizer, fusion_bert):
    question = tokenizer("what is the man playing", return_tensors="pt")["input_ids"]  # [1, 7]
    answer = tokenizer("a red guitar [SEP]", add_special_tokens=False, return_tensors="pt")["input_ids"]
    input_ids = torch.cat([question, answer], dim=1)
    prefix = question.shape[1]
    memory, _ = memory_for(1)

    def run(ids):
        with torch.no_grad():
            return fusion_bert(ids, mask_mode="prefix", prefix_lengths=torch.tensor([prefix]),
                               encoder_hidden_states=memory).last_hidden_state[0]

    base = run(input_ids)
    later_answer = input_ids.clone()
    later_answer[0, prefix + 1:] = tokenizer.convert_tokens_to_ids("banana")
    changed = run(later_answer)
    torch.testing.assert_close(changed[:prefix + 1], base[:prefix + 1], atol=ATOL, rtol=0)
    assert not torch.allclose(changed[prefix + 1:], base[prefix + 1:], atol=1e-3)
    late_question = input_ids.clone()
    late_question[0, prefix - 2] = tokenizer.convert_tokens_to_ids("banana")
    assert not torch.allclose(run(late_question)[0], base[0], atol=1e-3)  # the prefix is bidirectional


# --- key-value cache -----------------------------------------------------------------------------

def random_ids(batch_size, length, seed):
    return torch.randint(1000, 5000, (batch_size, length), generator=torch.Generator().manual_seed(seed))


def step_by_step(model, input_ids, first, memory=None, memory_mask=None, cache=None, **first_kwargs):
    """Feed input_ids[:, :first] in one call, then one token a call; return hidden states and cache."""
    outputs = []
    for start, stop in [(0, first)] + [(t, t + 1) for t in range(first, input_ids.shape[1])]:
        kwargs = dict(first_kwargs, encoder_hidden_states=memory, encoder_attention_mask=memory_mask) if start == 0 else {}
        output = model(input_ids[:, start:stop], past_key_values=cache, use_cache=True, **kwargs)
        cache = output.past_key_values
        outputs.append(output.last_hidden_state)
    return torch.cat(outputs, dim=1), cache


@pytest.mark.parametrize("with_memory", [False, True])
@torch.no_grad()
def test_cache_matches_full_causal_forward_and_reorders(fusion_bert, with_memory):
    memory, memory_mask = memory_for(3) if with_memory else (None, None)
    input_ids = random_ids(3, 7, seed=2)
    full = fusion_bert(input_ids, mask_mode="causal", encoder_hidden_states=memory,
                       encoder_attention_mask=memory_mask).last_hidden_state
    stepped, cache = step_by_step(fusion_bert, input_ids, 3, memory, memory_mask, mask_mode="causal")
    assert isinstance(cache, KVCache) and cache.seq_length == 7 and cache.has_memory == with_memory
    torch.testing.assert_close(stepped, full, atol=ATOL, rtol=0)

    # Beam search keeps rows [2, 0, 0] and goes on; equals a full pass over the re-assembled sequences.
    index = torch.tensor([2, 0, 0])
    cache.reorder(index)
    suffix = random_ids(3, 2, seed=3)
    continued, _ = step_by_step(fusion_bert, suffix, 1, cache=cache)
    reordered = dict(encoder_hidden_states=memory[index], encoder_attention_mask=memory_mask[index]) if with_memory else {}
    expected = fusion_bert(torch.cat([input_ids[index], suffix], dim=1), mask_mode="causal",
                           **reordered).last_hidden_state[:, 7:]
    torch.testing.assert_close(continued, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_cache_repeat_interleave_expands_batch(fusion_bert):
    memory, memory_mask = memory_for(2)
    input_ids = random_ids(2, 4, seed=4)
    _, cache = step_by_step(fusion_bert, input_ids, 4, memory, memory_mask, mask_mode="causal")
    cache.repeat_interleave(3)
    suffix = random_ids(6, 3, seed=5)
    continued, _ = step_by_step(fusion_bert, suffix, 1, cache=cache)
    expected = fusion_bert(torch.cat([input_ids.repeat_interleave(3, 0), suffix], dim=1), mask_mode="causal",
                           encoder_hidden_states=memory.repeat_interleave(3, 0),
                           encoder_attention_mask=memory_mask.repeat_interleave(3, 0)).last_hidden_state[:, 4:]
    torch.testing.assert_close(continued, expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_cache_with_prefix_and_padding_mask(fusion_bert):
    # QA: the question (row 1 padded inside it) is the prefix; answer tokens decode one at a time.
    memory, memory_mask = memory_for(2)
    input_ids = random_ids(2, 8, seed=6)
    attention_mask = torch.ones(2, 8, dtype=torch.long)
    attention_mask[1, 3] = 0
    prefix = torch.tensor([4, 4])
    full = fusion_bert(input_ids, attention_mask, mask_mode="prefix", prefix_lengths=prefix,
                       encoder_hidden_states=memory, encoder_attention_mask=memory_mask).last_hidden_state
    outputs = [fusion_bert(input_ids[:, :5], attention_mask[:, :5], mask_mode="prefix", prefix_lengths=prefix,
                           encoder_hidden_states=memory, encoder_attention_mask=memory_mask, use_cache=True)]
    for t in range(5, 8):
        outputs.append(fusion_bert(input_ids[:, t:t + 1], attention_mask[:, :t + 1],
                                   past_key_values=outputs[-1].past_key_values))
    stepped = torch.cat([output.last_hidden_state for output in outputs], dim=1)
    torch.testing.assert_close(stepped, full, atol=ATOL, rtol=0)


# --- names, loading, sizes -----------------------------------------------------------------------

def test_parameter_names_are_huggingface_names():
    keys = set(create_text_encoder("minilm_l6", add_cross_attention=True).state_dict())
    for name in ["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                 "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
                 "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.output.dense.bias",
                 "bert.encoder.layer.0.attention.output.LayerNorm.weight",
                 "bert.encoder.layer.0.crossattention.self.query.weight",
                 "bert.encoder.layer.5.crossattention.self.value.bias",
                 "bert.encoder.layer.0.crossattention.output.LayerNorm.bias",
                 "bert.encoder.layer.0.intermediate.dense.weight", "bert.encoder.layer.0.output.dense.weight",
                 "bert.encoder.layer.0.output.LayerNorm.weight", "cls.predictions.transform.dense.weight",
                 "cls.predictions.transform.LayerNorm.weight", "cls.predictions.decoder.weight",
                 "cls.predictions.decoder.bias", "cls.predictions.bias"]:
        assert name in keys, name
    assert not [k for k in keys if "pooler" in k or "position_ids" in k]


def test_load_bert_logs_one_line_with_new_cross_attention(caplog):
    with caplog.at_level(logging.INFO, logger="vast.models.text"):
        model = load_bert(minilm_path(), add_cross_attention=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "vast.models.text"]
    assert len(lines) == 1
    newly, unused = lines[0].split("newly initialised:")[1].split("unused from file:")
    assert "encoder.layer.*.crossattention.self.query.weight (x6)" in newly
    assert "attention.self.query" not in newly.replace("crossattention", "")  # the self-attention loaded
    assert "pooler.dense.weight" in unused
    assert not model.training and isinstance(model, BertModel)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vast.models.text"):
        load_bert("minilm_l6")
    assert "newly initialised: none" in caplog.records[-1].getMessage()


def write_pretraining_layout(folder, head: dict[str, torch.Tensor]):
    """A BertForPreTraining-style pytorch_model.bin: `bert.` prefix, old gamma/beta names, pooler and heads."""
    from safetensors.torch import load_file

    folder.mkdir()
    shutil.copy(f"{minilm_path()}/config.json", folder / "config.json")
    state = {}
    for key, value in load_file(f"{minilm_path()}/model.safetensors").items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state["bert." + key] = value
    state.update(head)
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    state["cls.seq_relationship.weight"] = torch.zeros(2, 384)
    torch.save(state, folder / "pytorch_model.bin")


def test_load_bert_pretraining_layout_with_head(tmp_path, batch, caplog):
    generator = torch.Generator().manual_seed(7)
    head = {"cls.predictions.transform.dense.weight": torch.randn(384, 384, generator=generator),
            "cls.predictions.transform.dense.bias": torch.randn(384, generator=generator),
            "cls.predictions.transform.LayerNorm.gamma": torch.rand(384, generator=generator),
            "cls.predictions.transform.LayerNorm.beta": torch.randn(384, generator=generator),
            "cls.predictions.bias": torch.randn(30522, generator=generator)}
    write_pretraining_layout(tmp_path / "bert", head)
    with caplog.at_level(logging.INFO, logger="vast.models.text"):
        model = load_bert(tmp_path / "bert", with_lm_head=True)
    message = caplog.records[-1].getMessage()
    assert "newly initialised: none" in message and "cls.seq_relationship.weight" in message
    assert isinstance(model, BertForMaskedLM)
    predictions = model.cls.predictions
    assert torch.equal(predictions.transform.LayerNorm.weight, head["cls.predictions.transform.LayerNorm.gamma"])
    assert torch.equal(predictions.bias, head["cls.predictions.bias"])
    input_ids, attention_mask = batch
    with torch.no_grad():
        hidden = model(input_ids, attention_mask).last_hidden_state
        torch.testing.assert_close(hidden, load_bert("minilm_l6")(input_ids, attention_mask).last_hidden_state,
                                   atol=0, rtol=0)
        bare = load_bert(tmp_path / "bert")(input_ids, attention_mask).last_hidden_state
        torch.testing.assert_close(bare, hidden, atol=0, rtol=0)
        logits = model.lm_logits(hidden)
    assert logits.shape == (*input_ids.shape, 30522)
    expected = predictions.transform(hidden) @ model.bert.embeddings.word_embeddings.weight.T + predictions.bias
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def assert_tied(model: BertForMaskedLM):
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias


def test_lm_head_stays_tied_after_loading():
    model = load_bert("minilm_l6", add_cross_attention=True, with_lm_head=True)
    assert_tied(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    assert_tied(model)
    # A file with position_ids and without the tied copies (old VAST checkpoints, HF files) loads strictly.
    slim = {k: v for k, v in state.items() if k not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")}
    slim["bert.embeddings.position_ids"] = torch.arange(512)[None]
    slim["cls.predictions.bias"] = torch.full((30522,), 0.5)
    model.load_state_dict(slim, strict=True)
    assert_tied(model)
    assert torch.equal(model.cls.predictions.decoder.bias, slim["cls.predictions.bias"])
    # Nested, as `multimodal_encoder` inside the VAST model.
    wrapper = nn.ModuleDict({"multimodal_encoder": model})
    wrapper.load_state_dict({"multimodal_encoder." + k: v.clone() for k, v in slim.items()}, assign=True)
    assert_tied(model)


def test_missing_folders_are_data_errors(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="pretrained_weights/bert/") as error:
        load_bert(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(TEXT_CONFIGS["minilm_l6"]))
    with pytest.raises(DataError, match="no BERT weights"):
        load_bert(tmp_path / "empty")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="bert-base-uncased"):
        load_tokenizer("bert_base_uncased")


def test_tokenizer_is_local_bert_uncased(tokenizer):
    assert tokenizer("Hello World")["input_ids"] == [101, 7592, 2088, 102]
    assert type(load_tokenizer(minilm_path())).__name__ == type(tokenizer).__name__


def test_create_text_encoder_sources(tmp_path):
    from_folder = create_text_encoder(minilm_path(), with_lm_head=False)
    assert isinstance(from_folder, BertModel) and from_folder.config.hidden_size == 384
    assert create_text_encoder(f"{minilm_path()}/config.json").config.num_hidden_layers == 6
    config = BertConfig.from_dict({**TEXT_CONFIGS["minilm_l6"], "model_type": "bert", "use_cache": True})
    assert config == BertConfig.from_pretrained(minilm_path())
    from_dict = create_text_encoder({**TEXT_CONFIGS["minilm_l6"], "encoder_width": 96}, add_cross_attention=True)
    assert from_dict.bert.encoder.layer[0].crossattention.self.key.in_features == 96
    with pytest.raises(ConfigError, match="minilm_l6"):
        create_text_encoder("bert_huge")


def test_bert_base_on_meta_device():
    counts = {}
    for cross in (False, True):
        with torch.device("meta"):
            model = create_text_encoder("bert_base_uncased", add_cross_attention=cross)
        assert all(p.is_meta for p in model.parameters())
        counts[cross] = sum(p.numel() for p in model.parameters())
    assert 109_000_000 < counts[False] < 111_000_000  # bert-base-uncased + MLM transform, no pooler
    assert counts[True] - counts[False] == 12 * (4 * (768 * 768 + 768) + 2 * 768)


def test_gradient_checkpointing_gives_same_outputs_and_gradients():
    config = {**TEXT_CONFIGS["minilm_l6"], "vocab_size": 200, "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 128, "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0, "encoder_width": 32}
    torch.manual_seed(0)
    model = create_text_encoder(config, add_cross_attention=True).train()
    input_ids = torch.randint(1, 200, (2, 6))
    memory = torch.randn(2, 3, 32)

    def run(enable):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        hidden = model(input_ids, mask_mode="causal", encoder_hidden_states=memory).last_hidden_state
        model.lm_logits(hidden).logsumexp(-1).sum().backward()
        return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_hidden, plain_grads = run(False)
    checkpointed_hidden, checkpointed_grads = run(True)
    torch.testing.assert_close(checkpointed_hidden, plain_hidden)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, msg=name)
