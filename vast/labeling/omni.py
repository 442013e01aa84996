"""The omni caption: one sentence that fuses a clip's vision caption, audio caption and subtitle.

VAST-27M's omni captions were written by an LLM from the three. This module holds the deterministic
template fusion, which serves when no LLM is configured (and, later, when an LLM's output fails
validation). Every record says which one wrote its caption (`omni_source`), so nobody mistakes a
template sentence for an LLM's.
"""

from __future__ import annotations

from vast.labeling.stages import Resources, Stage


def _clause(text: str) -> str:
    """A caption as a clause: trimmed, without its final full stop."""
    return text.strip().rstrip(".").strip()


def template_omni_caption(vision: str, audio: str, subtitle: str) -> str:
    """'<vision>, while <audio>, and someone says "<subtitle>".' with the parts a clip has."""
    parts = []
    if vision := _clause(vision):
        parts.append(vision[0].upper() + vision[1:])
    if audio := _clause(audio):
        audio = audio[0].lower() + audio[1:]
        parts.append(f"while {audio}" if parts else audio[0].upper() + audio[1:])
    if subtitle := _clause(subtitle):
        said = f'someone says "{subtitle}"'
        parts.append(f"and {said}" if parts else said[0].upper() + said[1:])
    return ", ".join(parts) + "." if parts else ""


class TemplateOmniCaptioner(Stage):
    """Labeling stage: `vision_cap`, `audio_cap`, `subtitle` -> `vast_cap` (one per vision caption,
    paired with the audio caption of the same rank) and `omni_source: "template"`."""

    name = "omni_captions"
    resources = Resources(cpus=0.25, memory_gb=0.1)

    def __call__(self, batch: list[dict]) -> list[dict]:
        for record in batch:
            if record.get("error"):
                continue
            visions = record.get("vision_cap") or [""]
            audios = record.get("audio_cap") or [""]
            subtitle = record.get("subtitle", "")
            captions = [template_omni_caption(v, audios[k % len(audios)], subtitle) for k, v in enumerate(visions)]
            captions = [c for c in captions if c]
            if not captions:
                record["error"] = f"{record.get('source', record.get('clip_id'))}: nothing to fuse (no vision " \
                                  "caption, audio caption or subtitle)"
                continue
            record.update(vast_cap=captions, omni_source="template")
        return batch
