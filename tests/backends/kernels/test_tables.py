"""Every kernel table sets every slot (no null function pointers), and the slots are exactly
the kernel families of csrc/kernels/kernels.h."""

from __future__ import annotations

from qwen_edge.backends.native import core

FAMILIES = {
    "gemv_f32", "gemm_f32", "gemm_f16", "gemm_bf16", "cvt_f16_f32", "cvt_bf16_f32",
    "cvt_f32_f16", "quantize_q8a", "gemv_q8a", "gemm_q8a", "dequantize_row", "rms_norm",
    "rms_norm_gated", "l2_norm", "rope", "softmax", "silu_mul", "sigmoid_mul", "conv1d_silu",
    "delta_rule", "attention_f16", "attention_f32", "attention_q8", "attention_q4",
}  # fmt: skip


def test_every_slot_is_set(isa: str) -> None:
    slots = core().table_slots(isa)
    assert set(slots) == FAMILIES
    assert all(slots.values()), [name for name, ok in slots.items() if not ok]


def test_ref_is_last_and_always_available() -> None:
    c = core()
    assert c.compiled_isas()[-1] == "ref" and c.available_isas()[-1] == "ref"
