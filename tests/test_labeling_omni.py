"""Template omni captions: the vision caption, the audio caption and the subtitle in one sentence."""

from vast.labeling.omni import TemplateOmniCaptioner, template_omni_caption


def test_template_keeps_every_fact_it_is_given():
    assert template_omni_caption("a red circle slides from left to right.", "A low hum plays.",
                                 " open the window") == \
        'A red circle slides from left to right, while a low hum plays, and someone says "open the window".'
    assert template_omni_caption("a dog runs", "", "") == "A dog runs."
    assert template_omni_caption("", "a whistle rises", "") == "A whistle rises."
    assert template_omni_caption("", "", "hello there") == 'Someone says "hello there".'
    assert template_omni_caption("", "", "") == ""


def test_stage_writes_one_caption_per_vision_caption_and_says_where_it_came_from():
    records = [{"clip_id": "a", "vision_cap": ["a cat sits", "a cat rests"], "audio_cap": ["rain falls"],
                "subtitle": ""},
               {"clip_id": "b", "vision_cap": [], "audio_cap": [], "subtitle": "", "source": "b.mp4"},
               {"clip_id": "c", "error": "c.mp4: has no audio stream"}]
    a, b, c = TemplateOmniCaptioner()(records)
    assert a["vast_cap"] == ["A cat sits, while rain falls.", "A cat rests, while rain falls."]
    assert a["omni_source"] == "template"
    assert "nothing to fuse" in b["error"] and "vast_cap" not in b
    assert c == {"clip_id": "c", "error": "c.mp4: has no audio stream"}
