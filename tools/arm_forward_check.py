"""Whole-model check across CPUs: the `tiny` model file's logits on emulated aarch64 against x86.

    python tools/arm_forward_check.py write DIR   # host: tiny checkpoint -> q4 file -> golden
    python tools/arm_forward_check.py check DIR   # under qemu: same file, compare with golden

`write` (run natively, x86) makes a random-weight `tiny` Qwen3.5 checkpoint, exports it with the
`q4` recipe and stores the file and its logits for a fixed prompt. `check` (run by
tools/arm_python_test.sh under emulated aarch64 CPython on each qemu CPU) loads the same file
with the kernel table that CPU selects, at 1 and 3 threads, and compares.

Tolerance, and why: the quantized products are bit-exact across tables for equal activations,
but the float kernels (norms, exp, attention, the delta rule) round differently per ISA, and a
last-bit difference can move an activation's int8 code by one. So the logits must agree to a
normalized MSE of 1e-4 (1% RMS), and the greedy token must be the same at every position where
the x86 top-2 margin exceeds twice the largest logit difference seen.
Measured (qemu 7.2, -cpu max / cortex-a76 / cortex-a72): normalized MSE 1.2e-13, largest logit
difference 1e-5, no activation code moved.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

PROMPT = [151, 9007, 42, 248000, 17, 3, 77777, 120000, 5, 999, 64, 2024]
NMSE_MAX = 1e-4


def write(out: Path) -> None:
    import qwen_edge
    from qwen_edge.export import presets
    from qwen_edge.export.convert import export
    from qwen_edge.export.random_checkpoint import write_random_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    ckpt = write_random_checkpoint(out / "checkpoint", presets.hf_config("tiny"), seed=0)
    export(ckpt, out / "tiny-q4.qe", recipe="q4")
    model = qwen_edge.load(out / "tiny-q4.qe", threads=1)
    logits = np.asarray(model.logits(PROMPT), dtype=np.float32)
    np.savez(out / "golden.npz", tokens=np.array(PROMPT), logits=logits)
    print(f"golden logits {logits.shape} from table {model.model.isa} written to {out}")


def check(out: Path) -> int:
    import qwen_edge

    golden = np.load(out / "golden.npz")
    want = golden["logits"].astype(np.float64)
    tokens = golden["tokens"].tolist()
    failures = 0
    for threads in (1, 3):
        model = qwen_edge.load(out / "tiny-q4.qe", threads=threads)
        got = np.asarray(model.logits(tokens), dtype=np.float64)
        if got.shape != want.shape:
            print(f"FAIL: logits shape {got.shape}, golden {want.shape}")
            return 1
        diff = np.abs(got - want)
        nmse = float(np.sum(diff**2) / np.sum(want**2))
        top2 = np.sort(want, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * diff.max()
        agree = got.argmax(axis=1) == want.argmax(axis=1)
        ok = nmse <= NMSE_MAX and bool(np.all(agree[clear]))
        failures += not ok
        print(
            f"{'ok  ' if ok else 'FAIL'} table {model.model.isa}, {threads} thread(s): "
            f"nmse {nmse:.2e} (max {NMSE_MAX:.0e}), max |dlogit| {diff.max():.2e}, "
            f"greedy agrees at {int(agree.sum())}/{len(agree)} positions "
            f"({int(clear.sum())} with a clear margin, all must agree)"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    if sys.argv[1] == "write":
        write(Path(sys.argv[2]))
    else:
        sys.exit(check(Path(sys.argv[2])))
