"""Cache keys: the system prompt a map was asked under is part of its key."""

from __future__ import annotations

from shared.keys import map_key


def _key(**extra) -> str:
    fields = {"pixels": "p" * 64, "task": "classification", "label": "cat", "vocabulary": None, "boxes": [],
              "prompt": "fg-bg-vocab", "prompt_version": 1, "grid": [4, 4], "per_instance": False,
              "return_layers": False, "extraction": {"layers": None, "system_prompt": "llava"},
              "model_id": "m", "model_revision": "r"}
    return map_key(**{**fields, **extra})


def test_the_system_prompt_changes_the_key_and_naming_the_teachers_own_does_not():
    default = _key()
    assert _key(system_prompt="llava") == default  # the teacher's own (in `extraction`): same map, same key
    assert _key(system_prompt="none") != default
    assert _key(extraction={"layers": None, "system_prompt": "none"}) != default  # a teacher asking without one
    assert _key(extraction={"layers": None, "system_prompt": "none"}, system_prompt="none") == \
        _key(extraction={"layers": None, "system_prompt": "none"})
