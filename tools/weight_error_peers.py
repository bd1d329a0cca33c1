#!/usr/bin/env python3
"""Weight-space error of qwen-edge files and llama.cpp GGUFs of the same checkpoint.

For every matrix, the dequantized weights are compared with the checkpoint's: the table gives
the relative RMS error sqrt(sum (Wq - W)^2 / sum W^2) over all layer matrices and over the
embedding (= tied LM head). Unlike the logit KL of `tools/eval_peers.py`, this does not depend
on how much a (random-weight) network amplifies perturbations. GGUFs are read and dequantized
with the `gguf-py` package vendored in llama-cpp-python's sdist.

    python tools/weight_error_peers.py models/0.8b models/peers/0.8b-q4.qe \\
        models/peers/0.8b-Q4_0.gguf \\
        --gguf-py models/peers/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from qwen_edge.formats.checkpoint import Checkpoint
from qwen_edge.formats.model_file import ModelFile

# GGUF tensor name -> qwen-edge (HF) name, for the tensors of Qwen3.5 0.8B/2B (nv == nk, so
# llama.cpp keeps the value-head order).
_GGUF_NAMES = {
    "attn_qkv": "linear_attn.in_proj_qkv", "attn_gate": "linear_attn.in_proj_z",
    "ssm_alpha": "linear_attn.in_proj_a", "ssm_beta": "linear_attn.in_proj_b",
    "ssm_out": "linear_attn.out_proj", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip


def gguf_matrices(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    out = {}
    for t in GGUFReader(str(path)).tensors:
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", t.name)
        if t.name == "token_embd.weight":
            name = "embed_tokens.weight"
        elif m and m.group(2) in _GGUF_NAMES:
            name = f"layers.{m.group(1)}.{_GGUF_NAMES[m.group(2)]}.weight"
        else:
            continue
        out[name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("files", type=Path, nargs="+", help=".qe and .gguf files")
    p.add_argument("--gguf-py", type=Path, help="folder of the gguf-py package")
    args = p.parse_args(argv)
    if args.gguf_py:
        sys.path.insert(0, str(args.gguf_py))
    ckpt = Checkpoint(args.checkpoint)
    params = sum(ckpt.info(n).numel for n in ckpt.config.text_tensor_shapes())
    print(
        "| file | size | bits/weight | rel. RMS error, layer matrices | rel. RMS error, embedding |"
    )
    print("|---|---|---|---|---|")
    for path in args.files:
        if path.suffix == ".gguf":
            mats = gguf_matrices(path)
        else:
            with ModelFile(path) as mf:
                mats = {n: np.array(mf.dequantize(n)) for n, e in mf.tensors.items()
                        if len(e.shape) == 2}  # fmt: skip
        err = {"layers": [0.0, 0.0], "embed": [0.0, 0.0]}
        for name, q in mats.items():
            w = ckpt.read(name)
            q = q.reshape(w.shape)
            part = err["embed" if name == "embed_tokens.weight" else "layers"]
            part[0] += float(np.sum((q.astype(np.float64) - w) ** 2))
            part[1] += float(np.sum(w.astype(np.float64) ** 2))
        size = path.stat().st_size
        rel = {k: np.sqrt(a / b) for k, (a, b) in err.items()}
        print(f"| {path.name} | {size / 1e6:.1f} MB | {8 * size / params:.3f} | "
              f"{rel['layers']:.5f} | {rel['embed']:.5f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
