"""Hugging Face checkpoint -> qwen-edge model file: recipes, per-tensor formats, streaming export.

`export()` reads one tensor at a time from the checkpoint files (large matrices in chunks of
rows, with pread rather than a memory map so read pages do not pile up in the resident set),
quantizes it, and streams it into `model_file.ModelFileWriter`, so peak memory
is about one quantized tensor plus a chunk, not the checkpoint. The tokenizer, chat template,
generation defaults and special tokens travel in the same file.

Recipes (`RECIPES`) give each kind of tensor a format; `--override GLOB=FORMAT` changes single
tensors. Small tensors (norms, conv1d, A_log, dt_bias: everything that is not a 2-D matrix)
always stay f32. Packed formats need K % 32 == 0; other matrices fall back to f16 (bf16 when
the checkpoint stores them in bf16, which is then lossless).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import native as native_backend
from ..errors import CheckpointError, ConfigError, QwenEdgeError
from ..formats import quant
from ..formats.checkpoint import Checkpoint
from ..formats.config import MTP_PREFIX
from ..formats.model_file import ARCH, ModelFileWriter, TensorSpec
from ..formats.safetensors import TensorInfo, to_float32
from ..version import __version__

log = logging.getLogger(__name__)

EMBEDDING = "embed_tokens.weight"
LM_HEAD = "lm_head.weight"
# GDN gate projections: [n_v_heads, H], 16 rows in 0.8B/2B; their outputs feed exp/softplus.
SMALL_PROJ = ("linear_attn.in_proj_a.weight", "linear_attn.in_proj_b.weight")
_CHUNK_ROWS = 4096
# Who quantizes packed tensors: "native" the C++ core (multithreaded), "python" the numba/numpy
# reference (`formats.quant`), "auto" native when this installation has it. Same bytes either way.
QUANTIZERS = ("auto", "native", "python")


@dataclass(frozen=True)
class Recipe:
    """Formats of the matrices of a recipe: default, embedding, LM head, GDN a/b projections,
    then (glob, format) pairs for named layer matrices, applied like `--override` (before it)."""

    name: str
    matrix: str
    embedding: str
    lm_head: str
    small_proj: str
    description: str
    tensors: tuple[tuple[str, str], ...] = ()
    # "Q4_0" / "Q4_K_M": after the choices above, layer matrices move to q6k in the order of
    # PROMOTIONS while the text tensors stay within the bytes llama.cpp's file of that type
    # gives the same shapes (`llama_tensor_bytes`).
    budget: str | None = None


# The q4 and q4m choices are measured on a trained checkpoint: see docs/quality.md.
RECIPES: dict[str, Recipe] = {
    "f32": Recipe("f32", "f32", "f32", "f32", "f32", "no quantization (parity baseline)"),
    "bf16": Recipe("bf16", "bf16", "bf16", "bf16", "bf16", "bfloat16 matrices"),
    "f16": Recipe("f16", "f16", "f16", "f16", "f16", "float16 matrices"),
    "q8": Recipe("q8", "q8g32", "q8g32", "q8g32", "q8g32", "int8 matrices, 8.5 bits/weight"),
    # The tied embedding / LM head in 6 bits: on the trained model it cuts the KL 4.8x for
    # 13 % more bytes (0.8B), still under llama.cpp Q4_0, which keeps it in 6 bits too.
    # The remaining bytes up to Q4_0's go to 6-bit layer matrices (PROMOTIONS).
    "q4": Recipe(
        "q4",
        "q4k",
        "q6k",
        "q6k",
        "q8g32",
        "int4 k-quant matrices, 6-bit embedding/LM head, int8 GDN gate projections, "
        "6-bit layer matrices (down_proj first) up to llama.cpp Q4_0's bytes",
        budget="Q4_0",
    ),
    # Symmetric 4-bit blocks of 32 everywhere: exactly onnxruntime's MatMulNBits (its default
    # zero point 8, f32 scales), so the ONNX export of q4s is as small and fast as that operator
    # allows (docs/onnx.md); int8 GDN gate projections as in q4.
    "q4s": Recipe(
        "q4s",
        "q4g32",
        "q4g32",
        "q4g32",
        "q8g32",
        "symmetric int4 blocks of 32 (onnxruntime's MatMulNBits form), int8 GDN gate projections",
    ),
    # The same with llama.cpp Q4_K_M's bytes.
    "q4m": Recipe(
        "q4m",
        "q4k",
        "q6k",
        "q6k",
        "q8g32",
        "q4 with 6-bit layer matrices up to llama.cpp Q4_K_M's bytes",
        budget="Q4_K_M",
    ),
}

# Which layer matrices a budget recipe stores in q6k first: the order measured on the trained
# checkpoint (docs/quality.md: down_proj gained the most KL per byte, then the GDN out_proj and
# in_proj_qkv, out_proj ahead of in_proj_z; the rest follow by their inputs' outlier ratio).
# Within a kind, llama.cpp's "more bits" layers (`_more_bits`) come first, then the others in
# layer order.
PROMOTIONS = (
    "mlp.down_proj",
    "linear_attn.out_proj",
    "linear_attn.in_proj_qkv",
    "linear_attn.in_proj_z",
    "self_attn.o_proj",
    "self_attn.v_proj",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
)


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits(i, n): the first and last eighth, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer(name: str) -> int:
    return int(name.split(".")[1]) if name.startswith("layers.") else -1


def llama_tensor_bytes(shapes: dict[str, tuple[int, ...]], ftype: str) -> int:
    """The tensor bytes of llama.cpp's Q4_0 or Q4_K_M file for these text tensors (the rules of
    its llama-quant.cpp, 0.3.36, for this architecture; checked against its files in
    docs/quality.md): the tied embedding / output in Q6_K (6.5625 bits/weight); for Q4_K_M also
    Q6_K for attn_v / attn_qkv (counted together in layer order) and ffn_down on its "more
    bits" layers; every other matrix 4.5 bits/weight (Q4_0, Q4_K); vectors and conv1d f32.
    MTP tensors are left out."""
    if ftype not in ("Q4_0", "Q4_K_M"):
        raise ConfigError(f"unknown budget '{ftype}'")
    text = {n: s for n, s in shapes.items() if not n.startswith(MTP_PREFIX)}
    wv = sorted(
        (n for n in text if n.endswith(("in_proj_qkv.weight", "self_attn.v_proj.weight"))),
        key=_layer,
    )
    downs = sorted((n for n in text if n.endswith("mlp.down_proj.weight")), key=_layer)
    six = {EMBEDDING, LM_HEAD}
    if ftype == "Q4_K_M":
        six |= {n for i, n in enumerate(wv) if _more_bits(i, len(wv))}
        six |= {n for i, n in enumerate(downs) if _more_bits(i, len(downs))}
    bits = 0
    for name, shape in text.items():
        n = int(np.prod(shape))
        bits += 32 * n if len(shape) != 2 else (n * 105 // 16 if name in six else n * 9 // 2)
    return bits // 8


def _promote(shapes: dict[str, tuple[int, ...]], formats: dict[str, str], budget: str) -> None:
    """Moves layer matrices to q6k in PROMOTIONS order while the text tensors' bytes stay
    within `llama_tensor_bytes(shapes, budget)`."""
    text = [n for n in shapes if not n.startswith(MTP_PREFIX)]
    limit = llama_tensor_bytes(shapes, budget)
    used = sum(quant.tensor_nbytes(formats[n], shapes[n]) for n in text)
    for kind in PROMOTIONS:
        names = sorted((n for n in text if n.endswith(f".{kind}.weight")), key=_layer)
        names = [n for i, n in enumerate(names) if _more_bits(i, len(names))] + [
            n for i, n in enumerate(names) if not _more_bits(i, len(names))
        ]
        for name in names:
            if formats[name] == "q6k" or not quant.can_pack(shapes[name]):
                continue
            extra = quant.tensor_nbytes("q6k", shapes[name]) - quant.tensor_nbytes(
                formats[name], shapes[name]
            )
            if used + extra <= limit:
                formats[name] = "q6k"
                used += extra


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """`["GLOB=FORMAT", ...]` -> {glob: format}, checking the formats.

    Raises:
        ConfigError: an item without `=` or an unknown format.
    """
    out: dict[str, str] = {}
    for item in items or []:
        pattern, sep, fmt = item.partition("=")
        pattern, fmt = pattern.strip(), fmt.strip()
        if not sep or not pattern or not fmt:
            raise ConfigError(f"--override '{item}': expected GLOB=FORMAT, e.g. 'lm_head.*=q8g32'")
        if fmt not in quant.FORMATS:
            raise ConfigError(
                f"--override '{item}': unknown format '{fmt}'; "
                f"choose from {', '.join(quant.FORMATS)}"
            )
        out[pattern] = fmt
    return out


def plan_formats(
    shapes: dict[str, tuple[int, ...]],
    recipe: str | Recipe,
    overrides: dict[str, str] | None = None,
    *,
    source_dtypes: dict[str, str] | None = None,
) -> dict[str, str]:
    """The storage format of every tensor.

    Args:
        shapes: tensor name -> logical shape (text tensors and any MTP tensors).
        recipe: a recipe name or `Recipe`.
        overrides: glob -> format; the last matching pattern wins. A packed format applies only
            to the matching tensors it can hold (2-D, K % 32 == 0); matching none is an error.
        source_dtypes: checkpoint dtype per tensor ("BF16", "F16", "F32"), to pick the
            lossless fallback for matrices a packed format cannot hold.

    Raises:
        ConfigError: unknown recipe, an override that matches nothing or cannot apply.
    """
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe '{recipe}'; choose from {', '.join(RECIPES)}")
        recipe = RECIPES[recipe]
    overrides = overrides or {}
    formats: dict[str, str] = {}
    for name, shape in shapes.items():
        if len(shape) != 2:
            formats[name] = "f32"
            continue
        if name == EMBEDDING:
            fmt = recipe.embedding
        elif name == LM_HEAD:
            fmt = recipe.lm_head
        elif name.endswith(SMALL_PROJ):
            fmt = recipe.small_proj
        else:
            fmt = recipe.matrix
        if quant.is_packed(fmt) and not quant.can_pack(shape):
            bf16_source = (source_dtypes or {}).get(name) == "BF16"
            fmt = "bf16" if bf16_source else "f16"
        formats[name] = fmt
    for pattern, fmt in recipe.tensors:
        for name in fnmatch.filter(shapes, pattern):
            if quant.can_pack(shapes[name]) or not quant.is_packed(fmt):
                formats[name] = fmt
    if recipe.budget is not None:
        _promote(shapes, formats, recipe.budget)
    for pattern, fmt in overrides.items():
        hits = [n for n in shapes if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(f"--override '{pattern}={fmt}' matches no tensor")
        if quant.is_packed(fmt):
            # A packed format applies to the matches it can hold (a broad glob like
            # 'layers.3.*' also matches norms); none at all is an error.
            packable = [n for n in hits if quant.can_pack(shapes[n])]
            if not packable:
                raise ConfigError(
                    f"--override '{pattern}={fmt}': none of the {len(hits)} matching tensors "
                    f"(e.g. '{hits[0]}', shape {list(shapes[hits[0]])}) can be stored in {fmt}, "
                    f"which needs a 2-D shape with K a multiple of {quant.BLOCK_K}"
                )
            hits = packable
        for name in hits:
            formats[name] = fmt
    return formats


# --- checkpoint side files ----------------------------------------------------------------------
GENERATION_KEYS = (
    "do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
    "presence_penalty", "frequency_penalty", "max_new_tokens", "eos_token_id", "pad_token_id",
    "bos_token_id",
)  # fmt: skip


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QwenEdgeError(f"{path}: cannot read: {e}") from None
    return value if isinstance(value, dict) else None


@dataclass
class SideFiles:
    """What the checkpoint folder holds besides weights."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None
    special_tokens: dict[str, Any] = field(default_factory=dict)


def read_side_files(ckpt: Checkpoint) -> SideFiles:
    """tokenizer.json (verbatim blob), chat template, generation defaults and special tokens."""
    root = ckpt.path
    side = SideFiles()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (root / name).is_file():
            side.blobs[name] = (root / name).read_bytes()
    gen = _read_json(root / "generation_config.json") or {}
    side.generation = {k: gen[k] for k in GENERATION_KEYS if k in gen}
    tok_cfg = _read_json(root / "tokenizer_config.json") or {}
    template = tok_cfg.get("chat_template")
    if (root / "chat_template.jinja").is_file():
        template = (root / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, str):
        side.chat_template = template

    vocab: dict[str, int] = {}
    tok = _read_json(root / "tokenizer.json") if "tokenizer.json" in side.blobs else None
    for entry in (tok or {}).get("added_tokens", []):
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            vocab[entry["content"]] = int(entry.get("id", -1))

    def ids_of(value: Any) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        if isinstance(value, list):
            return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        return []

    eos = ids_of(gen.get("eos_token_id")) + list(ckpt.config.eos_token_id)
    special: dict[str, Any] = {}
    for role in ("eos", "pad", "bos"):
        content = tok_cfg.get(f"{role}_token")
        if isinstance(content, dict):
            content = content.get("content")
        if isinstance(content, str):
            special[f"{role}_token"] = content
            if content in vocab:
                if role == "eos":
                    eos.append(vocab[content])
                else:
                    special[role] = vocab[content]
    if "pad" not in special and ids_of(gen.get("pad_token_id")):
        special["pad"] = ids_of(gen.get("pad_token_id"))[0]
    special["eos"] = sorted(set(eos))
    side.special_tokens = special
    return side


# --- export -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportSummary:
    """What `export` wrote."""

    path: Path
    recipe: str
    file_bytes: int
    weight_bytes: int
    parameters: int
    seconds: float
    formats: dict[str, int]  # format -> tensor count
    format_parameters: dict[str, int]  # format -> parameters stored in it
    mtp: bool

    @property
    def bits_per_weight(self) -> float:
        """Tensor bytes * 8 / parameters (text model, plus MTP when kept)."""
        return 8.0 * self.weight_bytes / self.parameters


class _RowReader:
    """A checkpoint tensor read as float32 in row chunks with pread: no memory map, so the
    pages read do not stay in this process's resident set (only the page cache)."""

    def __init__(self, info: TensorInfo):
        self.info = info
        self.shape = info.shape
        self.row_bytes = (info.end - info.start) // max(info.shape[0], 1) if info.shape else 0
        self._dtype = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[info.dtype]

    def __getitem__(self, rows: slice) -> np.ndarray:
        n_rows = self.shape[0] if self.shape else 1
        r0, r1, _ = rows.indices(n_rows)
        count = max(r1 - r0, 0)
        if not self.shape:
            count, r0 = 1, 0
        nbytes = count * self.row_bytes if self.shape else self.info.end - self.info.start
        with open(self.info.path, "rb") as f:
            buf = os.pread(f.fileno(), nbytes, self.info.start + r0 * self.row_bytes)
        if len(buf) != nbytes:
            raise CheckpointError(f"{self.info.path}: short read of tensor '{self.info.name}'")
        raw = np.frombuffer(buf, dtype=self._dtype).reshape((count, *self.shape[1:]))
        return to_float32(raw if self.shape else raw.reshape(()), self.info.dtype)


def _mtp_infos(ckpt: Checkpoint) -> dict[str, TensorInfo]:
    return dict(sorted(ckpt.groups.mtp.items()))


def native_quantizer(
    quantizer: str = "auto", threads: int | None = None
) -> quant.NativeQuantizer | None:
    """The native quantizer `quantizer` ("auto", "native", "python") asks for, or None for the
    numba/numpy one.

    Raises:
        ConfigError: an unknown choice, or "native" without a native core.
    """
    if quantizer not in QUANTIZERS:
        raise ConfigError(f"unknown quantizer '{quantizer}'; choose from {', '.join(QUANTIZERS)}")
    if quantizer == "python" or (quantizer == "auto" and not native_backend.available()):
        return None
    if not native_backend.available():
        raise ConfigError("the native quantizer needs the native core, which is not built here")
    return native_backend.quantizer(threads)  # type: ignore[no-any-return]


@dataclass
class Calibration:
    """Per-input-channel importance of the matrices (activation-aware quantization): for each
    tensor name, the mean squared activation of each input channel [k] on calibration text
    (`tools/activation_stats.py --calibration`, which writes it as an .npz), and what text."""

    importance: dict[str, np.ndarray]
    meta: dict[str, Any]

    def get(self, name: str) -> np.ndarray | None:
        return self.importance.get(name)


def read_calibration(path: str | Path) -> Calibration:
    """A calibration file (.npz: one float32 [k] array per tensor name, plus "__meta__", a
    JSON string). Each array is floored at 1e-3 of its mean, so a dead channel still counts
    a little and the weights stay positive.

    Raises:
        ConfigError: the file is missing, unreadable or holds a bad array.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the calibration file {path}: {e}") from None
    meta_raw = arrays.pop("__meta__", None)
    meta = json.loads(str(meta_raw)) if meta_raw is not None else {}
    importance = {}
    for name, a in arrays.items():
        a = a.astype(np.float64).reshape(-1)
        if a.size == 0 or not np.isfinite(a).all() or (a < 0).any() or a.max() <= 0:
            raise ConfigError(f"calibration file {path}: '{name}' is not a positive vector")
        importance[name] = np.maximum(a / a.mean(), 1e-3).astype(np.float32)
    return Calibration(importance, meta)


def _encode(
    fmt: str,
    src: _RowReader,
    native: quant.NativeQuantizer | None = None,
    importance: np.ndarray | None = None,
) -> Iterator[np.ndarray]:
    """The stored bytes of one tensor, in pieces: plain formats row chunk by row chunk."""
    rows = src.shape[0] if len(src.shape) > 1 else 0
    if quant.is_packed(fmt):
        yield quant.quantize(fmt, src, native, importance)
    elif rows > _CHUNK_ROWS:
        for r0 in range(0, rows, _CHUNK_ROWS):
            yield quant.encode_plain(fmt, src[r0 : r0 + _CHUNK_ROWS])
    else:
        yield quant.encode_plain(fmt, src[:])


def export(
    checkpoint: str | Path | Checkpoint,
    output: str | Path,
    recipe: str = "q4",
    overrides: dict[str, str] | None = None,
    *,
    keep_mtp: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    quantizer: str = "auto",
    threads: int | None = None,
    calibration: str | Path | Calibration | None = None,
) -> ExportSummary:
    """Exports a Qwen3.5 checkpoint folder to one model file.

    Args:
        checkpoint: the Hugging Face folder (or an open `Checkpoint`).
        output: the model file to write (atomically).
        recipe: one of `RECIPES`.
        overrides: glob -> format, applied after the recipe.
        keep_mtp: also store the MTP head's tensors (matrices in the recipe's matrix format).
        progress: called as (tensor name, index, total) before each tensor.
        quantizer: who quantizes packed tensors: "auto" (native when built), "native" or
            "python" (numba/numpy); the file's bytes are the same.
        threads: threads of the native quantizer (default: every CPU this process may use).
        calibration: a calibration file (`read_calibration`) or its contents: the packed
            4- and 6-bit matrices it names are quantized with their inputs' importance
            (activation-aware); None quantizes every matrix unweighted.

    Returns:
        An `ExportSummary`.

    Raises:
        CheckpointError, ConfigError: a bad checkpoint, recipe or override.
        ModelFileError: the file could not be written (full disk, ...); nothing is left behind.
    """
    start = time.perf_counter()
    native = native_quantizer(quantizer, threads)
    calib = read_calibration(calibration) if isinstance(calibration, (str, Path)) else calibration
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
    cfg = ckpt.config
    infos: dict[str, TensorInfo] = {n: ckpt.info(n) for n in cfg.text_tensor_shapes()}
    mtp = _mtp_infos(ckpt) if keep_mtp else {}
    infos.update(mtp)
    shapes = {n: i.shape for n, i in infos.items()}
    overrides = dict(overrides or {})
    formats = plan_formats(
        shapes, recipe, overrides, source_dtypes={n: i.dtype for n, i in infos.items()}
    )
    if calib is not None:
        for name, imp in calib.importance.items():
            if name in shapes and (len(shapes[name]) != 2 or shapes[name][1] != imp.size):
                raise ConfigError(
                    f"calibration: '{name}' has {imp.size} channels, the tensor "
                    f"{list(shapes[name])}"
                )
    specs = [TensorSpec(n, formats[n], shapes[n]) for n in infos]
    side = read_side_files(ckpt)
    params = sum(i.numel for i in infos.values())
    weight_bytes = sum(s.nbytes for s in specs)
    header: dict[str, Any] = {
        "arch": ARCH,
        "config": cfg.to_dict(),
        "quant": {
            "recipe": recipe,
            "overrides": overrides,
            "bits_per_weight": round(8.0 * weight_bytes / params, 4),
            **({"calibration": calib.meta} if calib is not None else {}),
        },
        "generation": side.generation,
        "special_tokens": side.special_tokens,
        "source": {
            "exporter": f"qwen-edge {__version__}",
            "checkpoint": ckpt.path.resolve().name,
            "layout": ckpt.layout,
            "dtypes": sorted({i.dtype for i in infos.values()}),
            "mtp": bool(mtp),
        },
    }
    if side.chat_template is not None:
        header["chat_template"] = side.chat_template
    blobs = [(name, len(data)) for name, data in side.blobs.items()]
    writer = ModelFileWriter(output, header, specs, blobs)
    with writer:
        for i, spec in enumerate(specs):
            if progress is not None:
                progress(spec.name, i, len(specs))
            imp = calib.get(spec.name) if calib is not None else None
            writer.write_tensor(
                spec.name, _encode(spec.format, _RowReader(infos[spec.name]), native, imp)
            )
        for name, data in side.blobs.items():
            writer.write_blob(name, data)
    counts: dict[str, int] = {}
    fparams: dict[str, int] = {}
    for spec in specs:
        counts[spec.format] = counts.get(spec.format, 0) + 1
        fparams[spec.format] = fparams.get(spec.format, 0) + int(np.prod(spec.shape))
    return ExportSummary(
        path=Path(output),
        recipe=recipe,
        file_bytes=writer.file_size,
        weight_bytes=weight_bytes,
        parameters=params,
        seconds=time.perf_counter() - start,
        formats=counts,
        format_parameters=fparams,
        mtp=bool(mtp),
    )
