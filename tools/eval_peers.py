#!/usr/bin/env python3
"""Quality table: qwen-edge q8/q4 and llama.cpp Q8_0/Q4_0/Q4_K_M against the fp32 reference.

One run, one set of token ids (the shipped eval text,
`qwen_edge/evaluation/data/eval_coriolanus.*`), one fp32 reference (the numpy reference model,
proven equal to transformers). For every candidate it reports file size, bits/weight (8 x file bytes
/ text-model parameters), mean and p99 KL(P_fp32 || P_candidate), top-1 agreement and the perplexity
ratio.

llama.cpp comes from llama-cpp-python's PyPI sdist (build flags: docs/benchmarks.md, "Peers and how
they were built"): its vendored `convert_hf_to_gguf.py` makes a bf16 GGUF (the checkpoint folder
needs the tokenizer files), `llama_cpp.llama_model_quantize` makes the quantized files, and logits
come from `Llama(logits_all=True).eval(ids)` per window.

    python tools/eval_peers.py models/0.8b --work models/peers \\
        --llama-src models/peers/llama_cpp_python-0.3.36/vendor/llama.cpp --json out.json

Variants of a recipe are scored without writing files: `--variant NAME=RECIPE:GLOB=FORMAT,...`
takes the recipe's exported file and re-quantizes only the overridden tensors in memory; its
size is the recipe file's size with those tensors' byte counts swapped (exact: every tensor
is a whole number of 64-byte units).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from qwen_edge.backends.reference import ReferenceModel
from qwen_edge.evaluation import quality
from qwen_edge.export import convert
from qwen_edge.formats.checkpoint import Checkpoint

LLAMA_TYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
               "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_gguf(ckpt: Path, work: Path, llama_src: Path | None) -> Path:
    out = work / f"{ckpt.name}-bf16.gguf"
    if out.exists():
        return out
    if llama_src is None:
        raise SystemExit(f"{out} is missing: pass --llama-src (the sdist's vendor/llama.cpp)")
    env = dict(os.environ, PYTHONPATH=str(llama_src / "gguf-py"))
    cmd = [sys.executable, str(llama_src / "convert_hf_to_gguf.py"), str(ckpt), "--no-mtp",
           "--outtype", "bf16", "--outfile", str(out)]  # fmt: skip
    log("converting: " + " ".join(cmd))
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return out


def quantize_gguf(src: Path, kind: str) -> Path:
    import llama_cpp

    out = src.with_name(src.name.replace("-bf16.gguf", f"-{kind}.gguf"))
    if out.exists():
        return out
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_TYPES[kind])
    params.nthread = 2
    log(f"llama.cpp quantize -> {out.name}")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed ({rc}) for {kind}")
    return out


def llama_fn(path: Path, ctx: int) -> Any:
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, n_threads=2,
                n_threads_batch=2, logits_all=True, verbose=False)  # fmt: skip

    def fn(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)

    return fn


def parse_variant(text: str) -> tuple[str, str, dict[str, str]]:
    name, _, spec = text.partition("=")
    recipe, _, ovs = spec.partition(":")
    return name, recipe, convert.parse_overrides([o for o in ovs.split(",") if o])


def variant_weights(
    ckpt: Checkpoint, base: Path, recipe: str, overrides: dict[str, str]
) -> tuple[Any, dict[str, np.ndarray], int]:
    """Weights of `base` with the overridden tensors re-quantized, and the variant's file size."""
    from qwen_edge.formats import quant
    from qwen_edge.formats.model_file import ModelFile

    shapes = ckpt.config.text_tensor_shapes()
    dtypes = {n: ckpt.info(n).dtype for n in shapes}
    formats = convert.plan_formats(shapes, recipe, overrides, source_dtypes=dtypes)
    size = base.stat().st_size
    weights = {}
    with ModelFile(base) as mf:
        for name, shape in shapes.items():
            old = mf.tensors[name]
            if formats[name] == old.format:
                weights[name] = np.array(mf.dequantize(name))
                continue
            data = quant.quantize(formats[name], ckpt.read(name))
            weights[name] = quant.dequantize(formats[name], data, shape)
            size += data.size - old.size
    return ckpt.config, weights, size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--work", type=Path, required=True, help="folder for the exported files")
    p.add_argument("--llama-src", type=Path, help="llama.cpp sources (for the GGUF converter)")
    p.add_argument("--tokens", type=int, help="first N tokens of the eval text (default: all)")
    p.add_argument("--ctx", type=int, default=quality.DEFAULT_CTX)
    p.add_argument("--variant", action="append", default=[], help="NAME=RECIPE[:GLOB=FMT,...]")
    p.add_argument(
        "--recipes", default="q8,q4",
        help="qwen-edge recipes to export (if missing) and score, comma-separated",
    )  # fmt: skip
    p.add_argument("--no-llama", action="store_true", help="only the qwen-edge files")
    p.add_argument(
        "--act-q8", action="store_true",
        help="qwen-edge rows also round matrix inputs through q8a (as the native kernels do)",
    )  # fmt: skip
    p.add_argument("--only", action="append", help="score only these labels (repeatable)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--ref-cache", type=Path, help="reuse/save the fp32 log-probs (.npy)")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint(args.checkpoint)
    params = sum(ckpt.info(n).numel for n in ckpt.config.text_tensor_shapes())

    candidates: list[tuple[str, str, Any]] = []  # (label, kind, path or variant spec)
    files = {}
    for recipe in args.recipes.split(","):
        path = files[recipe] = args.work / f"{args.checkpoint.name}-{recipe}.qe"
        if not path.exists():
            log(f"export {recipe} -> {path.name}")
            s = convert.export(ckpt, path, recipe)
            log(f"  {s.file_bytes / 1e6:.1f} MB in {s.seconds:.0f} s")
        candidates.append((f"qwen-edge {recipe}", "qe", path))
    if not args.no_llama:
        bf16 = make_gguf(args.checkpoint, args.work, args.llama_src)
        for kind in LLAMA_TYPES:
            candidates.append((f"llama.cpp {kind}", "gguf", quantize_gguf(bf16, kind)))
    for name, recipe, ovs in map(parse_variant, args.variant):
        candidates.append((f"qwen-edge {name}", "variant", (files[recipe], recipe, ovs)))

    if args.only:
        candidates = [c for c in candidates if c[0] in args.only]
    wins = quality.windows(quality.eval_tokens(args.tokens), args.ctx)
    if args.ref_cache and args.ref_cache.exists():
        stacked = np.load(args.ref_cache, mmap_mode="r")
        cached = [np.asarray(a) for a in np.split(stacked, len(wins))]
        assert sum(len(w) - 1 for w in wins) == stacked.shape[0], "stale --ref-cache"
    else:
        log(f"fp32 reference on {len(wins)} windows of {args.ctx} tokens")
        ref = ReferenceModel.from_checkpoint(ckpt, context=args.ctx)
        cached = list(quality.reference_logprobs(quality.reference_fn(ref), wins))
        del ref
        if args.ref_cache:
            np.save(args.ref_cache, np.concatenate(cached))

    results = []
    for label, kind, path in candidates:
        log(f"scoring {label}")
        start = time.perf_counter()
        if kind in ("qe", "variant"):
            if kind == "qe":
                config, weights = quality.model_file_weights(path)
                size = path.stat().st_size
            else:
                config, weights, size = variant_weights(ckpt, *path)
            model = ReferenceModel(config, weights, context=args.ctx)
            del weights
            if args.act_q8:
                base = path if kind == "qe" else path[0]
                quality.with_q8a_inputs(model, quality.packed_tensors(base))
                label += " +q8a"
            fn = quality.reference_fn(model)
        else:
            fn = llama_fn(path, args.ctx)
            size = path.stat().st_size
        report = quality.compare(cached, fn, wins)
        del fn
        row = {"format": label, "file_bytes": size, "bits_per_weight": 8 * size / params,
               **report.to_dict(), "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        log(json.dumps(row))
        results.append(row)

    print(f"\n{params:,} text parameters; {results[0]['tokens']} positions in {len(wins)} "
          f"windows of {args.ctx} tokens; KL in nats vs the fp32 reference\n")  # fmt: skip
    print("| format | file size | bits/weight | mean KL | p99 KL | top-1 | PPL ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['format']} | {r['file_bytes'] / 1e6:.1f} MB | {r['bits_per_weight']:.3f} | "
              f"{r['mean_kl']:.5f} | {r['p99_kl']:.5f} | {100 * r['top1']:.2f} % | "
              f"{r['ppl_ratio']:.5f} |")  # fmt: skip
    if args.json:
        doc = {"parameters": params, "ctx": args.ctx, "windows": len(wins), "results": results}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
