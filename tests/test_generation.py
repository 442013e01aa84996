"""Generation: cached and uncached decoding agree token for token (greedy, beam, QA prefix);
beam search and top-k sampling behave; the masked-LM masking follows the paper's rates."""

import pytest
import torch

from vast.models.generation import GenerationConfig, MaskSlotDecoder, generate
from vast.models.vast import VAST, MediaTokens
from vast.objectives import mask_tokens
from vast.tasks import ModalityGroup

from test_model import model_cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    vast = VAST(model_cfg()).eval()
    # a random LM head prefers a few tokens; sharper, varied logits make the comparison meaningful
    with torch.no_grad():
        vast.multimodal_encoder.cls.predictions.bias.normal_(0, 2.0)
    return vast


@pytest.fixture(scope="module")
def media(model):
    torch.manual_seed(1)
    vision = torch.randn(3, 2, 3, 64, 64)
    audio = torch.randn(3, 1, 256, 64)
    with torch.no_grad():
        return model.encode_media(ModalityGroup.parse("tvas").modalities, vision, audio,
                                  ["open the window", "wash the car", ""])


def _tokens(model, media, group, config, questions=None):
    memory, memory_mask = model.fusion_memory(media, ModalityGroup.parse(group))
    if questions is None:
        ids = torch.full((memory.shape[0], 1), model.tokenizer.cls_token_id)
        mask = torch.ones_like(ids)
    else:
        tokens = model.tokenize(questions, model.max_question_len)
        ids, mask = tokens.input_ids, tokens.attention_mask
    decoder = MaskSlotDecoder(model.multimodal_encoder, memory, memory_mask, ids, mask,
                              model.tokenizer.mask_token_id, bidirectional_prefix=questions is not None,
                              use_cache=config.use_cache)
    return generate(decoder, config, model.tokenizer.sep_token_id, model.tokenizer.pad_token_id)


@pytest.mark.parametrize("strategy,beam", [("greedy", 1), ("beam", 3)])
def test_cached_and_uncached_generation_give_identical_tokens(model, media, strategy, beam):
    with torch.no_grad():
        cached = _tokens(model, media, "tvas", GenerationConfig(strategy=strategy, beam_size=beam, max_len=12))
        uncached = _tokens(model, media, "tvas", GenerationConfig(strategy=strategy, beam_size=beam, max_len=12,
                                                                   use_cache=False))
    assert cached == uncached
    assert any(len(seq[0]) > 3 for seq in cached)  # real sequences, not an immediate [SEP]


def test_cached_qa_prefix_matches_uncached(model, media):
    questions = ["what color is the circle", "what word is spoken in the clip"]
    small = MediaTokens(**{k: (v[:2] if v is not None else None) for k, v in vars(media).items()})
    with torch.no_grad():
        for beam in (1, 3):
            config = GenerationConfig(strategy="beam" if beam > 1 else "greedy", beam_size=beam, max_len=6)
            cached = _tokens(model, small, "tva", config, questions)
            uncached = _tokens(model, small, "tva", GenerationConfig(**{**vars(config), "use_cache": False}), questions)
            assert cached == uncached


def test_uncached_step_equals_full_forward_logits(model, media):
    """The mask-slot decoder reads the logits the full causal forward gives at the [MASK] slot."""
    memory, _ = model.fusion_memory(media, ModalityGroup.parse("tv"))
    tok = model.tokenizer
    ids = torch.tensor([[tok.cls_token_id, 2000, 2001]] * 3)
    with torch.no_grad():
        decoder = MaskSlotDecoder(model.multimodal_encoder, memory, None, ids[:, :1], torch.ones(3, 1, dtype=torch.long),
                                  tok.mask_token_id)
        decoder.first_logits()
        decoder.next_logits(ids[:, 1])
        step = decoder.next_logits(ids[:, 2])
        full_ids = torch.cat([ids, torch.full((3, 1), tok.mask_token_id)], dim=1)
        hidden = model.multimodal_encoder(full_ids, torch.ones_like(full_ids), encoder_hidden_states=memory,
                                          mask_mode="causal").last_hidden_state
        full = model.multimodal_encoder.lm_logits(hidden[:, -1])
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)


def test_beam_search_scores_at_least_greedy(model, media):
    """With the same length normalisation, beam search never returns a worse sequence than greedy."""
    def score(sequence, row):
        memory, _ = model.fusion_memory(media[row:row + 1], ModalityGroup.parse("tvas"))
        tok = model.tokenizer
        ids = [tok.cls_token_id] + sequence + [tok.sep_token_id]
        total = 0.0
        for t in range(1, len(ids)):
            x = torch.tensor([ids[:t] + [tok.mask_token_id]])
            hidden = model.multimodal_encoder(x, torch.ones_like(x), encoder_hidden_states=memory,
                                              mask_mode="causal").last_hidden_state
            total += torch.log_softmax(model.multimodal_encoder.lm_logits(hidden[:, -1]), -1)[0, ids[t]].item()
        return total / (((5 + len(sequence) + 1) / 6) ** 0.6)

    with torch.no_grad():
        greedy = _tokens(model, media, "tvas", GenerationConfig(strategy="greedy", max_len=8))
        beam = _tokens(model, media, "tvas", GenerationConfig(strategy="beam", beam_size=4, max_len=8))
        for row in range(3):
            if len(greedy[row][0]) < 8 and len(beam[row][0]) < 8:  # both ended with [SEP]
                assert score(beam[row][0], row) >= score(greedy[row][0], row) - 1e-4


def test_topk_sampling_gives_several_samples_from_the_top_k(model, media):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        memory, _ = model.fusion_memory(media, ModalityGroup.parse("tv"))
        ids = torch.full((3, 1), model.tokenizer.cls_token_id)
        decoder = MaskSlotDecoder(model.multimodal_encoder, memory, None, ids, torch.ones_like(ids),
                                  model.tokenizer.mask_token_id)
        out = generate(decoder, GenerationConfig(strategy="sample", num_samples=4, top_k=3, max_len=6),
                       model.tokenizer.sep_token_id, model.tokenizer.pad_token_id, generator)
        first = MaskSlotDecoder(model.multimodal_encoder, memory, None, ids, torch.ones_like(ids),
                                model.tokenizer.mask_token_id).first_logits()
    assert len(out) == 3 and all(len(samples) == 4 for samples in out)
    top3 = first.topk(3).indices.tolist()
    for row, samples in enumerate(out):
        assert all(s[0] in top3[row] for s in samples if s)
    assert len({tuple(s) for samples in out for s in samples}) > 3  # samples differ


def test_generate_text_returns_strings_for_captions_and_answers(model, media):
    with torch.no_grad():
        captions = model.generate_text(media, ModalityGroup.parse("tvas"), GenerationConfig(max_len=5))
        answers = model.generate_text(media, ModalityGroup.parse("tv"), GenerationConfig(max_len=3),
                                      questions=["what color", "what word", "what sound", "which way"],
                                      video_index=torch.tensor([0, 0, 1, 2]))
    assert len(captions) == 3 and all(isinstance(c[0], str) for c in captions)
    assert len(answers) == 4


def test_mask_tokens_rates_and_labels():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (400, 50))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False
    masked, labels = mask_tokens(ids, maskable, 0.6, 103, 30522, generator=generator)
    chosen = labels != -100
    assert not chosen[:, 0].any()
    assert abs(chosen[:, 1:].float().mean().item() - 0.6) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])
    share_mask = (masked[chosen] == 103).float().mean().item()
    share_kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert abs(share_mask - 0.8) < 0.01 and abs(share_kept - 0.1) < 0.01
    assert torch.equal(masked[~chosen], ids[~chosen])
    # a row with a single maskable position always predicts it
    one = torch.zeros(5, 50, dtype=torch.bool)
    one[:, 7] = True
    _, labels = mask_tokens(ids[:5], one, 0.01, 103, 30522, generator=generator)
    assert (labels[:, 7] != -100).all() and (labels[:, :7] == -100).all()
