"""Task strings parse once into typed objects; every malformed string is a clear ConfigError."""

import pytest

from vast.errors import ConfigError
from vast.tasks import VALID_GROUP_NAMES, Modality, ModalityGroup, TaskType, parse_task


def test_single_section():
    spec = parse_task("ret%tvas")
    assert spec.types == (TaskType.RETRIEVAL,)
    (group,) = spec.groups()
    assert group.modalities == (Modality.VISION, Modality.AUDIO, Modality.SUBTITLE)
    assert group.name == "tvas" and group.is_omni


def test_many_groups_and_sections():
    spec = parse_task("ret%tvas%tva%tvs%tv%ta_cap%tv%ta")
    assert [g.name for g in spec.groups(TaskType.RETRIEVAL)] == ["tvas", "tva", "tvs", "tv", "ta"]
    assert [g.name for g in spec.groups(TaskType.CAPTION)] == ["tv", "ta"]
    assert spec.types == (TaskType.RETRIEVAL, TaskType.CAPTION)
    assert spec.modalities == (Modality.VISION, Modality.AUDIO, Modality.SUBTITLE)
    assert str(spec) == "ret%tvas%tva%tvs%tv%ta_cap%tv%ta"


def test_modalities_needed_by_a_task():
    assert parse_task("cap%ta").modalities == (Modality.AUDIO,)
    assert parse_task("qa%tvs").modalities == (Modality.VISION, Modality.SUBTITLE)
    assert not ModalityGroup.parse("tv").is_omni


def test_every_group_name_round_trips():
    assert set(VALID_GROUP_NAMES) == {"tv", "ta", "ts", "tva", "tvs", "tas", "tvas"}
    for name in VALID_GROUP_NAMES:
        assert ModalityGroup.parse(name).name == name


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("ret%tsv", "invalid modality group 'tsv'"),
        ("ret%vt", "invalid modality group 'vt'"),
        ("ret%tvx", "invalid modality group 'tvx'"),
        ("rett%tv", "invalid task type 'rett'"),
        ("ret", "needs modality groups"),
        ("ret%", "needs modality groups"),
        ("ret%tv%tv", "twice"),
        ("", "non-empty"),
        ("ret%tv_", "invalid task type ''"),
    ],
)
def test_invalid_task_strings(text, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        parse_task(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_suggestion_for_misordered_group():
    with pytest.raises(ConfigError) as info:
        parse_task("ret%tsv")
    assert "tvs" in str(info.value)


def test_group_order_is_enforced_in_objects():
    with pytest.raises(ValueError):
        ModalityGroup((Modality.AUDIO, Modality.VISION))
