"""Checkpoint or `.qe` model file -> an ONNX graph of the same quantized model, for onnxruntime.

The graph carries exactly the codes and scales of the `.qe` recipe (docs/onnx.md): 4-bit, 8-bit
and 6-bit blocks as onnxruntime's `MatMulNBits`, plain matrices as `MatMul` (`onnx_weights`).

The embedding is a row lookup (`GatherBlockQuantized`) that dequantizes the gathered rows of the
same initializers in the graph, so a tied LM head shares them. The layers use onnxruntime's
contrib operators the way onnxruntime-genai's builder writes Qwen3.5 (`CausalConvWithState`,
`LinearAttentionGate`, `LinearAttention`, `GatedRMSNorm`, `GroupQueryAttention`,
`SkipSimplifiedLayerNormalization`), with inputs and outputs named as genai expects, so `--genai`
adds the config genai loads (`onnx_genai`). RoPE is `RotaryEmbedding` on angles computed in the
graph from `position_ids` (no cos/sin tables of every position). Decode is a chain of small
operators, so the graph keeps their count low (stacked matrices, one L2 norm for q and k). The
decoding state (KV caches, conv and recurrent states) is explicit graph inputs (`past...`) and
outputs (`present...`).

`onnx` is imported lazily: the package installs without it (`pip install onnx`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, QwenEdgeError
from ..formats import quant
from ..formats.atomic_files import (
    create_temporary_folder,
    fsync_dir,
    publishing,
    remove_stale_temporaries,
)
from ..formats.checkpoint import Checkpoint
from ..formats.config import LINEAR
from ..formats.model_file import ARCH, ModelFile
from ..version import __version__
from .convert import EMBEDDING, LM_HEAD, RECIPES, _encode, _RowReader, plan_formats, read_side_files
from .onnx_genai import write_bytes, write_genai_files
from .onnx_weights import OnnxMatrix, onnx_matrix

log = logging.getLogger(__name__)

F32 = np.float32
METADATA_KEY = "qwen_edge.header"  # the `.qe` header JSON (config, recipe, tokens, template)
ACCURACY_LEVEL = 4  # MatMulNBits quantizes activations to int8 blocks, as the native kernels do
_EXTERNAL_THRESHOLD = 1024  # initializers above this many bytes go to the .data file


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise QwenEdgeError(
            "the ONNX export needs the `onnx` package: pip install onnx onnxruntime"
        ) from None
    return onnx


# --- where the tensors come from ----------------------------------------------------------------
class _Source:
    """Tensor name -> (format, shape, stored bytes): a `.qe` file's bytes, or a checkpoint
    quantized by a recipe exactly as `convert.export` quantizes it."""

    def __init__(self, path: str | Path, recipe: str, overrides: dict[str, str] | None) -> None:
        self.path = Path(path)
        self._mf: ModelFile | None = None
        if self.path.is_file():
            if overrides:
                raise ConfigError("--override applies when exporting from a checkpoint folder")
            self._mf = ModelFile(self.path)
            self.config = self._mf.config
            self.header = dict(self._mf.header)
            self.recipe = str(self.header.get("quant", {}).get("recipe", "?"))
            self.tokenizer_json = (
                self._mf.blob("tokenizer.json") if "tokenizer.json" in self._mf.blobs else None
            )
            return
        ckpt = Checkpoint(self.path)
        self.config = ckpt.config
        self._infos = {n: ckpt.info(n) for n in self.config.text_tensor_shapes()}
        shapes = {n: i.shape for n, i in self._infos.items()}
        self._formats = plan_formats(
            shapes, recipe, overrides, source_dtypes={n: i.dtype for n, i in self._infos.items()}
        )
        side = read_side_files(ckpt)
        self.recipe = recipe
        self.header = {
            "arch": ARCH,
            "config": self.config.to_dict(),
            "quant": {"recipe": recipe, "overrides": dict(overrides or {})},
            "generation": side.generation,
            "special_tokens": side.special_tokens,
            "source": {
                "exporter": f"qwen-edge {__version__}",
                "checkpoint": ckpt.path.resolve().name,
                "layout": ckpt.layout,
            },
        }
        if side.chat_template is not None:
            self.header["chat_template"] = side.chat_template
        self.tokenizer_json = side.blobs.get("tokenizer.json")
        self.side_blobs = side.blobs

    def format(self, name: str) -> str:
        if self._mf is not None:
            return self._mf.tensors[name].format
        return self._formats[name]

    def matrix(self, name: str) -> OnnxMatrix:
        shape = self.config.text_tensor_shapes()[name]
        if self._mf is not None:
            return onnx_matrix(self.format(name), self._mf.raw(name), (shape[0], shape[1]))
        data = np.concatenate(
            [np.asarray(p).reshape(-1).view(np.uint8)
             for p in _encode(self.format(name), _RowReader(self._infos[name]))]
        )  # fmt: skip
        return onnx_matrix(self.format(name), data, (shape[0], shape[1]))

    def vector(self, name: str) -> np.ndarray:
        if self._mf is not None:
            return np.array(self._mf.dequantize(name), dtype=F32)
        return np.array(_RowReader(self._infos[name])[:], dtype=F32)

    def close(self) -> None:
        if self._mf is not None:
            self._mf.close()


# --- the graph ----------------------------------------------------------------------------------
class _Graph:
    """A small builder over onnx.helper: unique names, initializers from numpy."""

    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.h = onnx.helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._names: set[str] = set()
        self._consts: dict[tuple[str, bytes], str] = {}
        self.accuracy_level = ACCURACY_LEVEL

    def name(self, base: str) -> str:
        n, i = base, 1
        while n in self._names:
            n, i = f"{base}_{i}", i + 1
        self._names.add(n)
        return n

    def init(self, name: str, array: np.ndarray) -> str:
        a = array if array.flags.c_contiguous else np.ascontiguousarray(array)  # keeps 0-d
        self.inits.append(self.onnx.numpy_helper.from_array(a, name))
        self._names.add(name)
        return name

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        a = np.asarray(value, dtype=dtype)
        key = (str(a.dtype) + str(a.shape), a.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self.name(f"const_{len(self._consts)}"), a)
        return self._consts[key]

    def op(
        self, op: str, inputs: list[str], name: str, n_out: int = 1, domain: str = "",
        outputs: list[str] | None = None, **attrs: Any,
    ) -> Any:  # fmt: skip
        outs = outputs or [self.name(f"{name}/out{i}") for i in range(n_out)]
        self.nodes.append(
            self.h.make_node(op, inputs, outs, name=self.name(name), domain=domain, **attrs)
        )
        return outs[0] if n_out == 1 and outputs is None else outs


def _linear(g: _Graph, x: str, w: str, m: OnnxMatrix, name: str) -> str:
    """x [..., K] times the matrix's transpose -> [..., N]."""
    n, k = m.shape
    if m.plain is not None:
        wt = f"{w}.T" if f"{w}.T" in g._names else g.init(f"{w}.T", m.plain.T)
        return g.op("MatMul", [x, wt], name)
    inputs = [x, f"{w}.qweight", f"{w}.scales"]
    if m.zero_points is not None:
        inputs.append(f"{w}.zero_points")
    return g.op(
        "MatMulNBits", inputs, name, domain="com.microsoft", K=k, N=n, bits=m.bits,
        block_size=quant.BLOCK_K, accuracy_level=g.accuracy_level,
    )  # fmt: skip


def _add_matrix(g: _Graph, w: str, m: OnnxMatrix) -> None:
    if m.plain is not None:
        g.init(f"{w}.T", m.plain.T)
        return
    assert m.packed is not None and m.scales is not None
    g.init(f"{w}.qweight", m.packed)
    g.init(f"{w}.scales", m.scales)
    if m.zero_points is not None:
        g.init(f"{w}.zero_points", m.zero_points)


def _embedding(g: _Graph, ids: str, w: str, m: OnnxMatrix) -> str:
    """Rows `ids` of the matrix, dequantized in the graph: (code - zero point) * scale.

    Blocks with MatMulNBits' default zero point (8 or 128) are one `GatherBlockQuantized`
    over the packed codes, whose default zero point is the same; float zero points (q4k,
    q4ag32) unpack the nibbles with standard operators."""
    n, k = m.shape
    if m.plain is not None:
        table = g.init(f"{w}.rows", m.plain)
        return g.op("Gather", [table, ids], "embed/Gather", axis=0)
    flat = g.op("Reshape", [f"{w}.qweight", g.const([n, -1])], "embed/flat")
    if m.zero_points is None:
        return g.op(
            "GatherBlockQuantized", [flat, ids, f"{w}.scales"], "embed/gather",
            domain="com.microsoft", bits=m.bits, block_size=quant.BLOCK_K, gather_axis=0,
            quantize_axis=1,
        )  # fmt: skip
    nb = k // quant.BLOCK_K
    rows = g.op("Gather", [flat, ids], "embed/rows", axis=0)  # [B, S, nb * blob] u8
    if m.bits == 4:
        lo = g.op("BitwiseAnd", [rows, g.const(15, np.uint8)], "embed/lo")
        hi = g.op("BitShift", [rows, g.const(4, np.uint8)], "embed/hi", direction="RIGHT")
        pair = g.op(
            "Concat",
            [g.op("Unsqueeze", [lo, g.const([-1])], "embed/lo1"),
             g.op("Unsqueeze", [hi, g.const([-1])], "embed/hi1")],
            "embed/pair", axis=-1,
        )  # fmt: skip
        rows = pair
    codes = g.op("Reshape", [rows, g.const([0, 0, nb, quant.BLOCK_K])], "embed/codes")
    codes = g.op("Cast", [codes], "embed/cast", to=g.onnx.TensorProto.FLOAT)
    zp = g.op("Gather", [f"{w}.zero_points", ids], "embed/zp", axis=0)
    zp = g.op("Unsqueeze", [zp, g.const([-1])], "embed/zp1")
    scale = g.op("Gather", [f"{w}.scales", ids], "embed/scales", axis=0)
    scale = g.op("Unsqueeze", [scale, g.const([-1])], "embed/scales1")
    v = g.op("Mul", [g.op("Sub", [codes, zp], "embed/centre"), scale], "embed/value")
    return g.op("Reshape", [v, g.const([0, 0, k])], "embed/out")


def _rms_norm(g: _Graph, x: str, weight: str, eps: float, name: str) -> str:
    return g.op("RMSNormalization", [x, weight], name, axis=-1, epsilon=eps, stash_type=1)


class _Builder:
    """The Qwen3.5 decoder as a graph, layer by layer (docs/model.md §4), into `_Graph`."""

    def __init__(self, src: _Source, onnx: Any, accuracy_level: int) -> None:
        self.src, self.c, self.onnx = src, src.config, onnx
        self.g = _Graph(onnx)
        self.g.accuracy_level = accuracy_level
        self.h, self.TP = onnx.helper, onnx.TensorProto
        self.eps = float(self.c.rms_norm_eps)
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.residual = ""
        self.seqlens = self.total = self.cos = self.sin = self.rope_rows = ""

    def io(self, name: str, shape: list[Any], dtype: int | None = None, out: bool = False) -> None:
        info = self.h.make_tensor_value_info(name, self.TP.FLOAT if dtype is None else dtype, shape)
        (self.outputs if out else self.inputs).append(info)

    def w1p(self, name: str) -> str:
        """A zero-centred norm weight as the operators take it: 1 + w, formed in f32."""
        return self.g.init(f"{name}+1", (F32(1) + self.src.vector(name)).astype(F32))

    def vec(self, name: str) -> str:
        return self.g.init(name, self.src.vector(name))

    def lin(self, x: str, tensor: str, name: str) -> str:
        m = self.src.matrix(tensor)
        _add_matrix(self.g, tensor, m)
        return _linear(self.g, x, tensor, m, name)

    def lin_many(self, x: str, tensors: list[str], name: str) -> list[str]:
        """x times several matrices of one input. Matrices of one MatMulNBits form (bits, zero
        points or not) are stacked by rows into one operator, whose output is split: the same
        codes and scales in fewer, larger calls (decode is a chain of small products)."""
        ms = [self.src.matrix(t) for t in tensors]
        forms = {(m.bits, m.zero_points is None) for m in ms}
        if any(m.plain is not None for m in ms) or len(forms) != 1:
            outs = []
            for t, m in zip(tensors, ms, strict=True):
                _add_matrix(self.g, t, m)
                outs.append(_linear(self.g, x, t, m, f"{name}/{t.rsplit('.', 2)[-2]}"))
            return outs
        zps = [m.zero_points for m in ms]
        fused = OnnxMatrix(
            (sum(m.shape[0] for m in ms), ms[0].shape[1]),
            ms[0].bits,
            np.concatenate([m.packed for m in ms]),  # type: ignore[misc]
            np.concatenate([m.scales for m in ms]),  # type: ignore[misc]
            None if zps[0] is None else np.concatenate(zps),  # type: ignore[arg-type]
        )
        prefix = tensors[0].rsplit(".", 2)[0]
        fname = prefix + "." + "+".join(t.rsplit(".", 2)[-2] for t in tensors) + ".weight"
        _add_matrix(self.g, fname, fused)
        y = _linear(self.g, x, fname, fused, name)
        sizes = self.g.const([m.shape[0] for m in ms])
        return list(self.g.op("Split", [y, sizes], f"{name}/split", n_out=len(ms), axis=-1))

    def norm_with_residual(self, sub_out: str, weight: str, name: str) -> str:
        """norm(residual + sub_out); the sum becomes the residual."""
        g = self.g
        outs = g.op(
            "SkipSimplifiedLayerNormalization", [self.residual, sub_out, weight], name,
            domain="com.microsoft", outputs=[g.name(f"{name}/out0"), "", "",
                                             g.name(f"{name}/out3")], epsilon=self.eps,
        )  # fmt: skip
        self.residual = outs[3]
        return str(outs[0])

    def attention_inputs(self) -> None:
        """GQA's sequence lengths (as genai's builder forms them) and the RoPE angles."""
        g, TP, c = self.g, self.TP, self.c
        mask_sum = g.op("ReduceSum", ["attention_mask", g.const([1])], "mask/sum", keepdims=0)
        last = g.op("Sub", [mask_sum, g.const(1)], "mask/last")
        self.seqlens = g.op("Cast", [last], "mask/seqlens", to=TP.INT32)
        shape = g.op("Shape", ["attention_mask"], "mask/shape")
        total = g.op("Gather", [shape, g.const(1)], "mask/total", axis=0)
        self.total = g.op("Cast", [total], "mask/total32", to=TP.INT32)
        from ..backends.reference import rope_inv_freq

        # Text-only MRoPE is plain RoPE on the first position row (docs/model.md §4.7 step 4).
        # The angles of this call's B * S positions become RotaryEmbedding's cos/sin caches
        # [B * S, half], indexed by 0 .. B * S - 1: no tables of every position.
        pos = g.op("Gather", ["position_ids", g.const(0)], "rope/pos", axis=0)  # [B, S]
        pos = g.op("Cast", [pos], "rope/posf", to=TP.FLOAT)
        pos = g.op("Unsqueeze", [pos, g.const([-1])], "rope/pos1")
        theta = g.op("Mul", [pos, g.init("rope.inv_freq", rope_inv_freq(c))], "rope/theta")
        theta = g.op("Flatten", [theta], "rope/theta_rows", axis=2)  # [B * S, half]
        self.cos = g.op("Cos", [theta], "rope/cos")
        self.sin = g.op("Sin", [theta], "rope/sin")
        ids_shape = g.op("Shape", ["input_ids"], "rope/ids_shape")
        count = g.op("ReduceProd", [ids_shape], "rope/count", keepdims=0)
        rows = g.op("Range", [g.const(0), count, g.const(1)], "rope/rows")
        self.rope_rows = g.op("Reshape", [rows, ids_shape], "rope/row_ids")  # [B, S]

    def linear_attention(self, i: int, x: str) -> str:
        """Gated DeltaNet (§4.8) through onnxruntime's contrib operators."""
        g, c, p, a = self.g, self.c, f"layers.{i}.linear_attn.", f"layers.{i}/linear_attn"
        nk, nv, dk, dv = (c.linear_num_key_heads, c.linear_num_value_heads,
                          c.linear_key_head_dim, c.linear_value_head_dim)  # fmt: skip
        qkv, z = self.lin_many(x, [p + "in_proj_qkv.weight", p + "in_proj_z.weight"], f"{a}/qkvz")
        b, av = self.lin_many(x, [p + "in_proj_b.weight", p + "in_proj_a.weight"], f"{a}/ba")
        qkv_t = g.op("Transpose", [qkv], f"{a}/qkv_t", perm=[0, 2, 1])  # [B, C, S]
        conv_b = g.init(p + "conv1d.bias", np.zeros(c.conv_dim, F32))
        state = ["batch_size", c.conv_dim, c.linear_conv_kernel_dim - 1]
        self.io(f"past.{i}.conv", state)
        self.io(f"present.{i}.conv", state, out=True)
        conv = g.op(
            "CausalConvWithState", [qkv_t, self.vec(p + "conv1d.weight"), conv_b,
                                    f"past.{i}.conv"], f"{a}/conv", domain="com.microsoft",
            outputs=[g.name(f"{a}/conv/out0"), f"present.{i}.conv"], ndim=1, activation="silu",
        )[0]  # fmt: skip
        conv = g.op("Transpose", [conv], f"{a}/conv_t", perm=[0, 2, 1])
        qk, v = g.op("Split", [conv, g.const([2 * c.key_dim, c.value_dim])], f"{a}/split",
                     n_out=2, axis=-1)  # fmt: skip
        # q and k heads L2-normalized by one operator; LinearAttention scales q by 1/sqrt(dk)
        qk = g.op("Reshape", [qk, g.const([0, 0, 2 * nk, dk])], f"{a}/qk_heads")
        qk = g.op("LpNormalization", [qk], f"{a}/qk_l2", axis=-1, p=2)
        qk = g.op("Reshape", [qk, g.const([0, 0, 2 * c.key_dim])], f"{a}/qk_flat")
        q, k = g.op("Split", [qk, g.const([c.key_dim, c.key_dim])], f"{a}/qk_split", n_out=2,
                    axis=-1)  # fmt: skip
        neg_a = g.init(p + "neg_exp_A", (-np.exp(self.src.vector(p + "A_log"))).astype(F32))
        decay, beta = g.op(
            "LinearAttentionGate", [av, self.vec(p + "dt_bias"), neg_a, b], f"{a}/gate",
            n_out=2, domain="com.microsoft",
        )  # fmt: skip
        self.io(f"past.{i}.recurrent", ["batch_size", nv, dk, dv])
        self.io(f"present.{i}.recurrent", ["batch_size", nv, dk, dv], out=True)
        o = g.op(
            "LinearAttention", [q, k, v, f"past.{i}.recurrent", decay, beta], f"{a}/rule",
            domain="com.microsoft", outputs=[g.name(f"{a}/rule/out0"), f"present.{i}.recurrent"],
            q_num_heads=nk, kv_num_heads=nv, update_rule="gated_delta",
            scale=float(1.0 / np.sqrt(dk)),
        )[0]  # fmt: skip
        y = g.op("GatedRMSNorm", [o, self.vec(p + "norm.weight"), z], f"{a}/norm",
                 domain="com.microsoft", epsilon=self.eps)  # fmt: skip
        return self.lin(y, p + "out_proj.weight", f"{a}/out")

    def attention(self, i: int, x: str) -> str:
        """Gated full attention with q/k norms, partial RoPE and GQA (§4.7)."""
        g, c, p, a = self.g, self.c, f"layers.{i}.self_attn.", f"layers.{i}/attn"
        nh, nkv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        proj, k, v = self.lin_many(
            x, [p + "q_proj.weight", p + "k_proj.weight", p + "v_proj.weight"], f"{a}/qkv"
        )
        proj = g.op("Reshape", [proj, g.const([0, 0, nh, 2 * hd])], f"{a}/q_heads")
        q, gate = g.op("Split", [proj, g.const([hd, hd])], f"{a}/q_gate", n_out=2, axis=-1)
        k = g.op("Reshape", [k, g.const([0, 0, nkv, hd])], f"{a}/k_heads")
        q = _rms_norm(g, q, self.w1p(p + "q_norm.weight"), self.eps, f"{a}/q_norm")
        k = _rms_norm(g, k, self.w1p(p + "k_norm.weight"), self.eps, f"{a}/k_norm")
        q = g.op("Reshape", [q, g.const([0, 0, nh * hd])], f"{a}/q_flat")
        k = g.op("Reshape", [k, g.const([0, 0, nkv * hd])], f"{a}/k_flat")
        q = self.rope(q, nh, f"{a}/q_rope")
        k = self.rope(k, nkv, f"{a}/k_rope")
        for kv in ("key", "value"):
            self.io(f"past_key_values.{i}.{kv}", ["batch_size", nkv, "past_sequence_length", hd])
            self.io(f"present.{i}.{kv}", ["batch_size", nkv, "total_sequence_length", hd],
                    out=True)  # fmt: skip
        o = g.op(
            "GroupQueryAttention",
            [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", self.seqlens,
             self.total], f"{a}/gqa", domain="com.microsoft",
            outputs=[g.name(f"{a}/gqa/out0"), f"present.{i}.key", f"present.{i}.value"],
            num_heads=nh, kv_num_heads=nkv, scale=float(1.0 / np.sqrt(hd)),
        )[0]  # fmt: skip
        gate = g.op("Reshape", [gate, g.const([0, 0, nh * hd])], f"{a}/gate_flat")
        o = g.op("Mul", [o, g.op("Sigmoid", [gate], f"{a}/gate_sig")], f"{a}/gated")
        return self.lin(o, p + "o_proj.weight", f"{a}/o")

    def rope(self, x: str, heads: int, name: str) -> str:
        """Rotate-half RoPE on the first rotary_dim dims of every head of x [B, S, heads * hd]
        (docs/model.md §4.7), at this call's positions (`attention_inputs`)."""
        return self.g.op(
            "RotaryEmbedding", [x, self.rope_rows, self.cos, self.sin], name,
            domain="com.microsoft", num_heads=heads, rotary_embedding_dim=self.c.rotary_dim,
            interleaved=0,
        )  # fmt: skip

    def mlp(self, i: int, x: str) -> str:
        """SwiGLU (§4.6)."""
        g, p, a = self.g, f"layers.{i}.mlp.", f"layers.{i}/mlp"
        gate, up = self.lin_many(x, [p + "gate_proj.weight", p + "up_proj.weight"], f"{a}/gate_up")
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{a}/sig")], f"{a}/silu")
        return self.lin(g.op("Mul", [act, up], f"{a}/prod"), p + "down_proj.weight", f"{a}/down")

    def build(self) -> Any:
        g, c, TP, h = self.g, self.c, self.TP, self.h
        self.io("input_ids", ["batch_size", "sequence_length"], TP.INT64)
        self.io("attention_mask", ["batch_size", "total_sequence_length"], TP.INT64)
        self.io("position_ids", [3, "batch_size", "sequence_length"], TP.INT64)
        self.io("logits", ["batch_size", "sequence_length", c.vocab_size], out=True)
        # The embedding; a tied LM head multiplies by the same initializers.
        emb = self.src.matrix(EMBEDDING)
        _add_matrix(g, EMBEDDING, emb)
        self.residual = _embedding(g, "input_ids", EMBEDDING, emb)
        if c.full_layers:
            self.attention_inputs()
        w = self.w1p("layers.0.input_layernorm.weight")
        x = _rms_norm(g, self.residual, w, self.eps, "layers.0/input_norm")
        for i, kind in enumerate(c.layer_types):
            out = self.linear_attention(i, x) if kind == LINEAR else self.attention(i, x)
            w = self.w1p(f"layers.{i}.post_attention_layernorm.weight")
            x = self.norm_with_residual(out, w, f"layers.{i}/post_norm")
            last = i + 1 == c.num_hidden_layers
            w = self.w1p("norm.weight" if last else f"layers.{i + 1}.input_layernorm.weight")
            x = self.norm_with_residual(self.mlp(i, x), w, f"layers.{i}/next_norm")
        if c.tie_word_embeddings:
            _linear(g, x, EMBEDDING, emb, "lm_head")
        else:
            self.lin(x, LM_HEAD, "lm_head")
        g.nodes[-1].output[0] = "logits"
        graph = h.make_graph(g.nodes, "qwen3_5", self.inputs, self.outputs, g.inits)
        return h.make_model(
            graph,
            opset_imports=[h.make_opsetid("", 23), h.make_opsetid("com.microsoft", 1)],
            producer_name="qwen-edge",
            producer_version=__version__,
        )


def build_graph(src: _Source, onnx: Any, accuracy_level: int = ACCURACY_LEVEL) -> Any:
    """The ModelProto of the model `src` holds (MatMulNBits at `accuracy_level`: 4 quantizes
    activations to int8 blocks, 0 multiplies in f32), its header in the metadata."""
    model = _Builder(src, onnx, accuracy_level).build()
    model.ir_version = 10
    shapes = src.config.text_tensor_shapes()
    header = dict(src.header)
    header["onnx"] = {
        "recipe": src.recipe,
        "formats": {n: src.format(n) for n, s in shapes.items() if len(s) == 2},
    }
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(header)})
    return model


# --- writing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxExportSummary:
    """What `export_onnx` wrote."""

    path: Path
    data_path: Path
    recipe: str
    file_bytes: int  # graph + external data
    seconds: float
    formats: dict[str, int]  # format -> matrix count
    genai: bool


def export_onnx(
    source: str | Path,
    output: str | Path,
    recipe: str = "q4s",
    overrides: dict[str, str] | None = None,
    *,
    genai: bool = False,
    threads: int | None = None,
    accuracy_level: int = ACCURACY_LEVEL,
    progress: Callable[[str, int, int], None] | None = None,
) -> OnnxExportSummary:
    """Writes the ONNX graph of a quantized Qwen3.5 model (docs/onnx.md).

    Args:
        source: a checkpoint folder (quantized with `recipe`, as `qwen-edge export` would) or a
            `.qe` model file (its stored weights, unchanged).
        output: the `.onnx` file; the weights go to `<output>.data` beside it. Both are
            written under temporary names and renamed into place.
        recipe: a recipe of `convert.RECIPES` (checkpoint sources only).
        overrides: glob -> format, as for `qwen-edge export`.
        genai: also write `genai_config.json` and the tokenizer files for onnxruntime-genai
            into the output's folder.
        threads: `intra_op_num_threads` written into genai_config.json (default 0: all cores).
        accuracy_level: MatMulNBits' `accuracy_level`: 4 (default) quantizes activations to
            int8 blocks as the native kernels do; 0 multiplies in f32 (the tests' exact check).
        progress: called as (stage, index, total).

    Raises:
        QwenEdgeError: onnx missing, a bad source, recipe or output.
    """
    onnx = _require_onnx()
    start = time.perf_counter()
    output = Path(output)
    if output.suffix != ".onnx":
        raise ConfigError(f"{output}: the ONNX output must end in .onnx")
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe '{recipe}'; choose from {', '.join(RECIPES)}")
    src = _Source(source, recipe, overrides)
    try:
        if progress is not None:
            progress("building graph", 0, 1)
        model = build_graph(src, onnx, accuracy_level)
        formats: dict[str, int] = {}
        for n, shape in src.config.text_tensor_shapes().items():
            if len(shape) == 2:
                formats[src.format(n)] = formats.get(src.format(n), 0) + 1
        output.parent.mkdir(parents=True, exist_ok=True)
        data_name = output.name + ".data"
        remove_stale_temporaries(output)  # what SIGKILLed exports to this path left behind
        tmp = create_temporary_folder(output)
        try:
            onnx.save_model(
                model, str(tmp / output.name), save_as_external_data=True,
                all_tensors_to_one_file=True, location=data_name,
                size_threshold=_EXTERNAL_THRESHOLD,
            )  # fmt: skip
            del model
            onnx.checker.check_model(str(tmp / output.name))
            for name in (data_name, output.name):
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
                os.chmod(tmp / name, 0o644)  # onnx creates the data file owner-only
            # Two renames and the side files: under the folder's lock, so a concurrent export
            # to this folder never publishes its graph beside our data, or the reverse.
            with publishing(output.parent):
                os.replace(tmp / data_name, output.parent / data_name)
                os.replace(tmp / output.name, output)
                fsync_dir(output.parent)
                if src.tokenizer_json is not None:  # the ONNX backend's tokenizer (and genai's)
                    write_bytes(output.parent / "tokenizer.json", bytes(src.tokenizer_json))
                if genai:
                    write_genai_files(src.config, src.header, output, threads=threads or 0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        src.close()
    data_path = output.parent / data_name
    return OnnxExportSummary(
        path=output,
        data_path=data_path,
        recipe=src.recipe,
        file_bytes=output.stat().st_size + data_path.stat().st_size,
        seconds=time.perf_counter() - start,
        formats=formats,
        genai=genai,
    )


def iter_graph_ops(path: str | Path) -> Iterator[tuple[str, str]]:
    """(domain, op type) of every node of a written graph (for inspection and tests)."""
    onnx = _require_onnx()
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        yield node.domain or "ai.onnx", node.op_type
