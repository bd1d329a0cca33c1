#!/usr/bin/env python3
"""Writes a random-weight Qwen3.5 checkpoint through transformers' own `save_pretrained`.

The text weights come from `qwen_edge.export.demo.random_tensor` (seeded, realistic scales);
the vision tower keeps transformers' seeded init. Like the hub checkpoints, the result stores
matrices in bf16 with `A_log` and the GDN norm weight in fp32, and (wrapper layout) carries an
MTP head, which transformers does not model, in an extra shard listed by the index.

    python tools/make_checkpoint.py tiny -o models/tiny
    python tools/make_checkpoint.py 0.8b --layout text -o models/0.8b-text
    python tools/make_checkpoint.py 2b -o models/2b

Needs `pip install torch==2.13.0 transformers` (the `reference` extra), which holds the whole
model in memory (float32 while building: ~36 GB for the 9B). `--writer numpy` writes the same
tensors without torch, made and written in chunks of rows into hub-style shards with an index,
so 4B- and 9B-shaped checkpoints need only a few tens of MB of memory:

    python tools/make_checkpoint.py 9b --writer numpy --shard-size 4GB -o models/9b

Drawing ~9e9 values takes minutes of CPU; `--weights tiled` builds each large matrix's rows
from a pool of 4M values with the same distribution (not the same values), at the cost of a
copy per value, for speed and memory measurements (docs/benchmarks.md, "Model size").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from qwen_edge.export import presets
from qwen_edge.export.random_checkpoint import (
    FP32_TENSOR_SUFFIXES,
    mtp_tensor_shapes,
    random_tensor,
    write_random_checkpoint,
)
from qwen_edge.formats.config import ModelConfig
from qwen_edge.formats.safetensors import float32_to_bf16, write_safetensors

TORCH_DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}


def build_model(hf_config: dict, layout: str, dtype: str, seed: int):  # type: ignore[no-untyped-def]
    """A transformers Qwen3.5 model holding the seeded qwen-edge random weights."""
    import torch
    import transformers

    torch.manual_seed(seed)
    # Build in float32 (the config's dtype would make transformers build in bf16 and lose the
    # fp32 tensors), then cast below as the hub does.
    hf_config = json.loads(json.dumps(hf_config))
    hf_config["text_config"]["dtype"] = "float32"
    if layout == "wrapper":
        config = transformers.Qwen3_5Config(**hf_config)
        model = transformers.Qwen3_5ForConditionalGeneration(config)
        prefix = "model.language_model."
    else:
        config = transformers.Qwen3_5TextConfig(**presets.text_only_config(hf_config))
        model = transformers.Qwen3_5ForCausalLM(config)
        prefix = "model."
    model.eval()
    cfg = ModelConfig.from_hf(hf_config)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, shape in cfg.text_tensor_shapes().items():
            target = params[name if name == "lm_head.weight" else prefix + name]
            target.copy_(torch.from_numpy(random_tensor(name, shape, seed)))
        if dtype != "f32":
            # As on the hub: matrices in the checkpoint dtype, A_log and the GDN norm in fp32.
            torch_dtype = getattr(torch, TORCH_DTYPES[dtype])
            for name, param in model.named_parameters():
                if not name.endswith(FP32_TENSOR_SUFFIXES):
                    param.data = param.data.to(torch_dtype)
    for cfg_obj in (model.config, model.config.get_text_config()):
        cfg_obj.dtype = TORCH_DTYPES[dtype]
    return model


def add_mtp_shard(out: Path, hf_config: dict, seed: int, dtype: str) -> None:
    """Adds the MTP head as its own shard and lists it in (or creates) the index."""
    cfg = ModelConfig.from_hf(hf_config)
    shapes = mtp_tensor_shapes(cfg)
    st_dtype = {"bf16": "BF16", "f16": "F16", "f32": "F32"}[dtype]
    convert = {
        "bf16": float32_to_bf16,
        "f16": lambda a: a.astype(np.float16),
        "f32": lambda a: a,
    }[dtype]
    shard = "model-mtp.safetensors"
    write_safetensors(
        out / shard,
        [(n, st_dtype, s) for n, s in shapes.items()],
        (convert(random_tensor(n, s, seed)) for n, s in shapes.items()),
        {"format": "pt"},
    )
    index_path = out / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
    else:  # save_pretrained wrote one file: describe it by an index, as the hub does
        from qwen_edge.formats.safetensors import SafetensorsFile

        single = SafetensorsFile(out / "model.safetensors")
        index = {"metadata": {}, "weight_map": {n: "model.safetensors" for n in single.tensors}}
        single.close()
    index["weight_map"].update({n: shard for n in shapes})
    index_path.write_text(json.dumps(index, indent=2) + "\n")


def parse_size(text: str) -> int:
    """'5GB', '500MB', '4GiB', '123' -> bytes (decimal units as transformers reads them)."""
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}
    t = text.strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(t)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", choices=presets.PRESET_NAMES)
    parser.add_argument("-o", "--output", required=True, type=Path)
    parser.add_argument("--layout", choices=["wrapper", "text"], default="wrapper")
    parser.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", default="5GB", help="max_shard_size for save_pretrained")
    parser.add_argument("--no-mtp", action="store_true", help="leave out the MTP head")
    parser.add_argument(
        "--writer",
        choices=["transformers", "numpy"],
        default="transformers",
        help="transformers' save_pretrained (needs torch, holds the model in memory), or numpy "
        "(no torch; tensors written in chunks of rows, so any size fits in little memory)",
    )
    parser.add_argument(
        "--weights",
        choices=["exact", "tiled"],
        default="exact",
        help="numpy writer: exact (random_tensor's values, ~30 M values per CPU second) or tiled "
        "(each large matrix's rows drawn from a 4M-value pool of the same distribution, with "
        "random signs: a copy per value, for speed and memory measurements of 4B/9B shapes)",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="copy tokenizer files and generation_config.json from this folder "
        "(tools/make_tokenizer.py writes them)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)

    if args.weights == "tiled" and args.writer != "numpy":
        parser.error("--weights tiled needs --writer numpy")
    if args.output.exists():
        if not args.force:
            parser.error(f"{args.output} exists (use --force to replace it)")
        shutil.rmtree(args.output)
    start = time.perf_counter()
    hf_config = presets.hf_config(args.preset)
    if args.writer == "numpy":
        write_random_checkpoint(
            args.output,
            hf_config,
            seed=args.seed,
            layout=args.layout,
            dtype=args.dtype,
            with_mtp=not args.no_mtp,
            shard_bytes=parse_size(args.shard_size),
            tiled=args.weights == "tiled",
        )
    else:
        model = build_model(hf_config, args.layout, args.dtype, args.seed)
        model.save_pretrained(args.output, max_shard_size=args.shard_size)
        del model
        if args.layout == "wrapper" and not args.no_mtp:
            add_mtp_shard(args.output, hf_config, args.seed, args.dtype)
    if args.tokenizer:
        for f in args.tokenizer.iterdir():
            wanted = f.name.startswith("tokenizer") or f.suffix == ".jinja"
            if f.is_file() and (wanted or f.name == "generation_config.json"):
                shutil.copy2(f, args.output / f.name)
    size = sum(f.stat().st_size for f in args.output.iterdir())
    print(
        f"wrote {args.output} ({args.preset}, {args.layout} layout, {args.dtype}, "
        f"seed {args.seed}): {size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
