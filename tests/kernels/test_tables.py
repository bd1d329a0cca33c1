"""Every kernel table sets every slot (no null function pointers), and names match the stub."""

from __future__ import annotations

from qwen_edge.runtime import core


def test_every_slot_is_set(isa: str) -> None:
    slots = core().table_slots(isa)
    assert len(slots) == 22
    assert all(slots.values()), [name for name, ok in slots.items() if not ok]


def test_ref_is_last_and_always_available() -> None:
    c = core()
    assert c.compiled_isas()[-1] == "ref" and c.available_isas()[-1] == "ref"
