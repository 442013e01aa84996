"""`vast.load_model` and the inference API (embed_text, embed, match, caption, answer)."""

import dataclasses
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

import vast
from vast.config import MODEL_KEYS
from vast.errors import ConfigError, DataError
from vast.models.checkpoints import atomic_save
from vast.models.generation import caption_generation_config
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


def test_run_precision_is_the_autocast_of_the_runs_evaluation(run_dir, clips, tmp_path, monkeypatch):
    """precision="run": the run's bf16 setting gives bf16 autocast where the CPU has it natively, as
    the run's evaluation had; float32 results either way; "fp32" (the default) ignores the run."""
    from vast import precision

    root, reference = run_dir
    bf16_run = tmp_path / "bf16_run"
    shutil.copytree(root, bf16_run)
    hps = json.loads((bf16_run / "log" / "hps.json").read_text())
    (bf16_run / "log" / "hps.json").write_text(json.dumps({**hps, "run_cfg": {"bf16": True, "fp16": False}}))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert vast.load_model(bf16_run).run_precision is None
    model = vast.load_model(bf16_run, precision="run")
    assert model.run_precision.bf16 and isinstance(model._autocast(), torch.autocast)
    features = model.embed("tvas", **clips)
    expected = reference.embed("tvas", **clips)
    assert features.dtype == torch.float32 and not torch.equal(features, expected)  # computed in bf16
    torch.testing.assert_close(features, expected, atol=0.05, rtol=0)
    assert vast.load_model(root, precision="run").run_precision.bf16 is False  # run_cfg {}: the defaults
    with pytest.raises(ConfigError, match="precision 'half'"):
        vast.load_model(root, precision="half")


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
        # the evaluation's setting (the config's beam_size), not a default of the API's own
        evaluation = dataclasses.replace(caption_generation_config(model.model_cfg), max_len=6)
        direct = model.generate_text(media, ModalityGroup.parse("tvas"), evaluation)
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


# --- a run folder written by the original VAST code ------------------------------------------------

ORIGINAL_BERT = {"vocab_size": 30522, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 64, "max_position_embeddings": 80, "type_vocab_size": 2, "model_type": "bert"}
# The LM head favours these tokens, so greedy captions are real sentences with punctuation and pieces.
FAVOURED = ["a", "man", "dog", "runs", "is", "n", "'", "t", "s", ",", ".", "!", "red", "car", "##ing", "play"]


@pytest.fixture(scope="module")
def original_run(tmp_path_factory):
    """A run as the original code leaves it: log/hps.json whose model_cfg has none of this project's
    QA keys, ckpt/model_step_<N>.pt with every original key family (the EVA text tower and logit
    scale included, the tied decoder stored next to the word embeddings, the MLM bias under both
    names), a 4-slot frame table and a 2-slot clip table. Weights are large enough that scores and
    greedy captions depend on the clip."""
    root = tmp_path_factory.mktemp("original_run")
    (root / "bert.json").write_text(json.dumps(ORIGINAL_BERT))
    saved_cfg = {"model_type": "vast", "max_caption_len": 14, "max_subtitle_len": 70, "contra_dim": 16,
                 "vision_encoder_type": "eva_tiny", "audio_encoder_type": "beats_tiny", "vision_resolution": 64,
                 "audio_target_length": 256, "beam_size": 1, "checkpointing": False, "frame_embedding_type": "adaptive",
                 "text_encoder_config": str(root / "bert.json"), "text_encoder_weights": "minilm_l6",
                 "max_vision_sample_num": 4, "max_audio_sample_num": 2}
    (root / "log").mkdir()
    (root / "log" / "hps.json").write_text(json.dumps({"run_cfg": {"fp16": True}, "model_cfg": saved_cfg,
                                                       "data_cfg": {"train": [], "val": []}, "local_rank": 0}))
    torch.manual_seed(0)
    layout = VAST({**{k: spec.default for k, spec in MODEL_KEYS.items()}, **saved_cfg})
    generator = torch.Generator().manual_seed(1)
    state = {}
    for key, value in layout.state_dict().items():
        noise = torch.randn(value.shape, generator=generator)
        is_norm = "norm" in key.lower() or (key.startswith("hidden_trans") and ".1." in key)
        if is_norm:
            state[key] = (1.0 if key.endswith("weight") else 0.0) + 0.1 * noise
        elif value.dim() == 2:
            state[key] = noise / value.shape[-1] ** 0.5
        else:
            state[key] = 0.1 * noise if key.endswith("bias") else 0.5 * noise
    bias = torch.full((30522,), -20.0)
    bias[layout.tokenizer.convert_tokens_to_ids(FAVOURED)] = 2.0 * torch.randn(len(FAVOURED), generator=generator)
    bias[layout.tokenizer.sep_token_id] = -6.0
    embeddings = 0.5 * torch.randn(30522, ORIGINAL_BERT["hidden_size"], generator=generator)
    state.update({"multimodal_encoder.bert.embeddings.word_embeddings.weight": embeddings,
                  "multimodal_encoder.cls.predictions.decoder.weight": embeddings.clone(),
                  "multimodal_encoder.cls.predictions.bias": bias,
                  "multimodal_encoder.cls.predictions.decoder.bias": bias.clone(),
                  "vision_encoder.text.token_embedding.weight": torch.zeros(10, 8),
                  "vision_encoder.logit_scale": torch.tensor(4.6)})
    atomic_save(state, root / "ckpt" / "model_step_40.pt")
    return root, state


@pytest.fixture(scope="module")
def original_model(original_run):
    return vast.load_model(original_run[0])


@pytest.fixture(scope="module")
def original_clips():
    torch.manual_seed(6)
    return {"vision": torch.randn(3, 2, 3, 64, 64), "audio": torch.randn(3, 2, 256, 64),
            "subtitles": ["turn left here", "", "it is very hot in here today"]}


def test_original_run_loads_whole(original_run, original_model):
    _, state = original_run
    model = original_model
    assert model.vision_frame_embedding.shape[1] == 4 and model.audio_frame_embedding.shape[1] == 2
    # the original pads questions to max_caption_len and trains answers as 10 tokens [CLS] .. [SEP]
    assert model.max_question_len == 14 and model.max_answer_len == 9
    lm = model.multimodal_encoder
    assert lm.cls.predictions.decoder.weight is lm.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(lm.cls.predictions.decoder.weight, state["multimodal_encoder.cls.predictions.decoder.weight"])
    kept = {k for k in state if not k.startswith(("vision_encoder.text.", "vision_encoder.logit_scale"))}
    assert kept <= set(model.state_dict())


def test_original_run_features_and_scores(original_model, original_clips):
    """Features and scores follow the original's recipe, written out step by step from our modules."""
    model = original_model
    texts = ["a man is playing the guitar", "dog", "the " * 20 + "end"]
    vision, audio, subtitles = original_clips["vision"], original_clips["audio"], original_clips["subtitles"]
    bert = model.multimodal_encoder.bert
    with torch.no_grad():
        # text: [CLS] of the bidirectional BERT over max_caption_len tokens (padding masked, so the
        # padding length does not matter), contra_head_t without bias, L2-normalised
        padded = model.tokenizer(texts, padding="max_length", truncation=True, max_length=14, return_tensors="pt")
        text = F.normalize(model.contra_head_t.linear(bert(padded["input_ids"], padded["attention_mask"])
                                                      .last_hidden_state[:, 0]), dim=-1)
        torch.testing.assert_close(model.embed_text(texts), text, atol=1e-5, rtol=0)

        frames = model.vision_encoder(vision.flatten(0, 1)).unflatten(0, (3, 2))  # [B, F, 1+P, Dv]
        clips = model.audio_encoder(audio.flatten(0, 1)).unflatten(0, (3, 2))  # [B, C, P, Da]
        sub = model.tokenizer(subtitles, padding="max_length", truncation=True, max_length=70, return_tensors="pt")
        sub_tokens = bert(sub["input_ids"], sub["attention_mask"]).last_hidden_state  # [B, 70, D]
        pooled = {"v": frames[:, :, 0].mean(1), "a": clips.mean(2).mean(1), "s": sub_tokens[:, 0]}
        # 2 frames take slots 0 and 2 of the 4-slot table (nearest); frame / clip embeddings are added
        # after the projection and before the type embedding; all 70 subtitle tokens are kept
        memories = {
            "v": (model.hidden_trans_vision_multimodal(frames) + model.vision_frame_embedding[:, [0, 2]].unsqueeze(2))
            .flatten(1, 2) + model.vision_type_embeddings,
            "a": (model.hidden_trans_audio_multimodal(clips) + model.audio_frame_embedding.unsqueeze(2))
            .flatten(1, 2) + model.audio_type_embeddings,
            "s": model.hidden_trans_subtitle_multimodal(sub_tokens) + model.subtitle_type_embeddings,
        }
        heads = {"tv": model.contra_head_v.linear, "ta": model.contra_head_a.linear, "tva": model.contra_head_va,
                 "tvs": model.contra_head_vs, "tvas": model.contra_head_vas}
        for group, head in heads.items():
            letters = group[1:]
            clip = F.normalize(head(torch.cat([pooled[c] for c in letters], dim=-1)), dim=-1)
            embedded = model.embed(group, **original_clips)
            torch.testing.assert_close(embedded, clip, atol=1e-5, rtol=0)
            # contrastive score: the plain dot product, no temperature
            torch.testing.assert_close(model.embed_text(texts) @ embedded.T, text @ clip.T, atol=1e-5, rtol=0)
            # matching: bidirectional text + cross-attention to the whole memory (no key mask)
            memory = torch.cat([memories[c] for c in letters], dim=1)
            expected = torch.stack([model.itm_head(bert(padded["input_ids"], padded["attention_mask"],
                                                        encoder_hidden_states=memory[j:j + 1].expand(3, -1, -1))
                                                   .last_hidden_state[:, 0]).softmax(-1)[:, 1] for j in range(3)], dim=1)
            scores = model.match(texts, group, **original_clips)
            torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
            assert scores.std() > 1e-3


def _decode_with_full_forwards(model, prefix, prefix_mask, question_length, memory, steps):
    """The original's greedy decoding, one full forward per token: append a [MASK] slot, read the
    slot's argmax; the question (if any) attends bidirectionally, everything after it causally; rows
    that gave [SEP] continue with [PAD]; stop when all rows are done or after `steps` tokens."""
    tok = model.tokenizer
    rows = prefix.shape[0]
    ids, keys = prefix, prefix_mask
    done = torch.zeros(rows, dtype=torch.bool)
    for _ in range(steps):
        slot = torch.full((rows, 1), tok.mask_token_id)
        mode = {"mask_mode": "prefix", "prefix_lengths": question_length} if question_length else {"mask_mode": "causal"}
        hidden = model.multimodal_encoder.bert(torch.cat([ids, slot], 1), torch.cat([keys, torch.ones_like(slot)], 1),
                                               encoder_hidden_states=memory, **mode).last_hidden_state
        token = model.multimodal_encoder.lm_logits(hidden[:, -1]).argmax(-1)
        token = token.masked_fill(done, tok.pad_token_id)
        done |= token == tok.sep_token_id
        ids, keys = torch.cat([ids, token[:, None]], 1), torch.cat([keys, torch.ones_like(slot)], 1)
        if done.all():
            break
    return [model.tokenizer.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=True)
            for row in ids[:, prefix.shape[1]:].tolist()]


def test_original_run_greedy_captions_and_answers(original_model, original_clips):
    model = original_model
    tok = model.tokenizer
    for group in ("tv", "ta", "tva", "tvs", "tvas"):
        parsed = ModalityGroup.parse(group)
        with torch.no_grad():
            memory, _ = model.fusion_memory(model._media(parsed, **original_clips), parsed)
            start = torch.full((3, 1), tok.cls_token_id)
            # captions: from [CLS], at most max_caption_len tokens
            expected = _decode_with_full_forwards(model, start, torch.ones_like(start), 0, memory, 14)
            assert model.caption(group, **original_clips, beam_size=1) == expected
            # answers: the question padded to max_question_len, then [CLS]; at most 10 tokens
            questions = ["what is the man doing", "why", "what color is the car in the middle of the road"]
            q = tok(questions, padding="max_length", truncation=True, max_length=14, return_tensors="pt")
            expected = _decode_with_full_forwards(model, torch.cat([q["input_ids"], start], 1),
                                                  torch.cat([q["attention_mask"], torch.ones_like(start)], 1),
                                                  14, memory, 10)
            assert model.answer(questions, group, **original_clips) == expected
    captions = model.caption("tvas", **original_clips, beam_size=1)
    assert len(set(captions)) == 3 and all(len(c.split()) > 2 for c in captions), captions


def test_caption_text_is_cleaned_up_as_the_original(original_model):
    tok = original_model.tokenizer
    ids = tok.convert_tokens_to_ids(["[CLS]", "a", "man", "is", "n", "'", "t", "play", "##ing", ",", "it", "'", "s",
                                     "red", ".", "[SEP]", "[PAD]"])
    assert original_model.decode(ids) == "a man isn't playing, it's red."


def test_frame_embedding_type_none_leaves_frames_unmarked(original_run, original_clips):
    """An original run with frame_embedding_type "none" adds no frame embedding to vision tokens
    (audio clips keep theirs)."""
    model = vast.load_model(original_run[0], frame_embedding_type="none")
    tv, ta = ModalityGroup.parse("tv"), ModalityGroup.parse("ta")
    with torch.no_grad():
        media = model._media(ModalityGroup.parse("tva"), **original_clips)
        frames = media.vision
        expected = model.hidden_trans_vision_multimodal(frames).flatten(1, 2) + model.vision_type_embeddings
        torch.testing.assert_close(model.fusion_memory(media, tv)[0], expected)
        adaptive = vast.load_model(original_run[0])
        torch.testing.assert_close(model.fusion_memory(media, ta)[0], adaptive.fusion_memory(media, ta)[0])
