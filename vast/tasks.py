"""Task strings (`ret%tvas%tv`, `cap%tv`, `qa%tvas`) parsed once into typed objects.

A task string is one or more `_`-separated sections `<type>%<group>%<group>...`, e.g.
`ret%tvas%tva_cap%tv` = retrieval over tvas and tva, captioning over tv. A group is `t` followed by
the condition modalities in the fixed order v, a, s. Everything downstream receives `TaskSpec` / `ModalityGroup` objects and never splits strings.
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass

from vast.errors import ConfigError


class Modality(enum.Enum):
    """A condition modality; its value is the letter used in group names."""

    VISION = "v"
    AUDIO = "a"
    SUBTITLE = "s"


class TaskType(enum.Enum):
    RETRIEVAL = "ret"
    CAPTION = "cap"
    QA = "qa"


MODALITY_ORDER = (Modality.VISION, Modality.AUDIO, Modality.SUBTITLE)


@dataclass(frozen=True)
class ModalityGroup:
    """Text paired with one or more condition modalities, e.g. `tva` = text with vision and audio."""

    modalities: tuple[Modality, ...]

    def __post_init__(self):
        if not self.modalities:
            raise ValueError("a modality group needs at least one condition modality")
        ordered = tuple(m for m in MODALITY_ORDER if m in self.modalities)
        if ordered != tuple(self.modalities):
            raise ValueError(f"modalities must be unique and in the order v, a, s: {self.modalities}")

    @property
    def name(self) -> str:
        return "t" + "".join(m.value for m in self.modalities)

    def __contains__(self, modality: Modality) -> bool:
        return modality in self.modalities

    @property
    def is_omni(self) -> bool:
        """Two or more condition modalities: fused by concatenation in the contrastive head."""
        return len(self.modalities) > 1

    @classmethod
    def parse(cls, name: str) -> "ModalityGroup":
        if name in VALID_GROUP_NAMES:
            letters = name[1:]
            return cls(tuple(Modality(letter) for letter in letters))
        raise ConfigError(
            f"invalid modality group '{name}': a group is 't' followed by v, a, s in that order"
            f"{_suggest(name, VALID_GROUP_NAMES)}"
        )

    def __str__(self) -> str:
        return self.name


def _all_group_names() -> tuple[str, ...]:
    names = []
    for mask in range(1, 2 ** len(MODALITY_ORDER)):
        letters = "".join(m.value for i, m in enumerate(MODALITY_ORDER) if mask & (1 << i))
        names.append("t" + letters)
    return tuple(sorted(names, key=lambda n: (len(n), [MODALITY_ORDER.index(Modality(c)) for c in n[1:]])))


VALID_GROUP_NAMES = _all_group_names()
VALID_TASK_TYPES = tuple(t.value for t in TaskType)


@dataclass(frozen=True)
class TaskEntry:
    """One (type, group) pair of a task: e.g. retrieval over `tvas`."""

    type: TaskType
    group: ModalityGroup

    def __str__(self) -> str:
        return f"{self.type.value}:{self.group.name}"


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task string: the objectives and modality groups a dataset trains or evaluates."""

    text: str
    entries: tuple[TaskEntry, ...]

    @property
    def types(self) -> tuple[TaskType, ...]:
        return tuple(dict.fromkeys(e.type for e in self.entries))

    def groups(self, task_type: TaskType | None = None) -> tuple[ModalityGroup, ...]:
        return tuple(
            dict.fromkeys(e.group for e in self.entries if task_type is None or e.type == task_type)
        )

    @property
    def modalities(self) -> tuple[Modality, ...]:
        """Every condition modality some entry needs: the data loader reads exactly these."""
        used = {m for e in self.entries for m in e.group.modalities}
        return tuple(m for m in MODALITY_ORDER if m in used)

    def __str__(self) -> str:
        return self.text


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.4)
    if close:
        return f" (did you mean {', '.join(repr(c) for c in close)}?)"
    return f" (valid: {', '.join(choices)})"


def _parse_type(word: str, text: str) -> TaskType:
    try:
        return TaskType(word)
    except ValueError:
        raise ConfigError(
            f"invalid task type '{word}' in task '{text}'{_suggest(word, VALID_TASK_TYPES)}"
        ) from None


def parse_task(text: str) -> TaskSpec:
    """Parse `ret%tvas%tva_cap%tv` into a TaskSpec; any mistake is a ConfigError naming the bad part.

    Sections are separated by `_`; each section is `<type>%<group>%<group>...`.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"task must be a non-empty string like 'ret%tvas', got {text!r}")
    text = text.strip()
    entries: list[TaskEntry] = []
    for section in text.split("_"):
        type_word, *group_names = section.split("%")
        task_type = _parse_type(type_word, text)
        if not group_names or not all(group_names):
            raise ConfigError(
                f"task '{text}': section '{section}' needs modality groups, e.g. '{type_word}%tvas'"
            )
        for group_name in group_names:
            try:
                group = ModalityGroup.parse(group_name)
            except ConfigError as error:
                raise ConfigError(f"{error} in task '{text}'") from None
            entry = TaskEntry(task_type, group)
            if entry in entries:
                raise ConfigError(f"task '{text}' lists {type_word}%{group_name} twice")
            entries.append(entry)
    return TaskSpec(text, tuple(entries))
