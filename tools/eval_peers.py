#!/usr/bin/env python3
"""Quality table: qwen-edge recipes against llama.cpp and onnxruntime-genai on the same tokens.

One run, one set of token ids, one fp32 reference (the numpy reference model, proven equal to
transformers). The tokens are the shipped eval text (`qwen_edge/evaluation/data/
eval_coriolanus.*`) or `--text FILE`: a token file such as the `heldout.tokens.json` that
`tools/train_small.py` writes next to its checkpoint, or UTF-8 text tokenized with the
checkpoint's tokenizer. For every candidate it reports file size, bits/weight (8 x file bytes /
text-model parameters), mean and p99 KL(P_fp32 || P_candidate), top-1 agreement and the
perplexity ratio; `--json` writes them all.

Candidates:

* qwen-edge recipes (`--recipes`, exported if missing), run through the reference model with
  the file's dequantized weights: weight quantization alone ("weights") and/or with every
  packed matrix's input rounded through q8a as the native kernels do ("+q8a"), per `--act`.
* `--variant NAME=RECIPE:GLOB=FORMAT,...`: the recipe's file with only the overridden tensors
  re-quantized, in memory; its size is the recipe file's with those tensors' byte counts
  swapped (exact: every tensor is a whole number of 64-byte units).
* `--calibration FILE` (`tools/activation_stats.py --calibration`): activation-aware
  quantization. The recipes are exported with it (as `CKPT-RECIPE-STEM.qe`, STEM the
  calibration file's name) and labelled "RECIPE/STEM"; variants re-quantize every tensor
  the file names with its importance (and start from the calibrated recipe file).
* llama.cpp Q8_0, Q4_0 and Q4_K_M (unless `--no-llama`): llama-cpp-python's vendored
  `convert_hf_to_gguf.py` makes a bf16 GGUF, `llama_cpp.llama_model_quantize` the quantized
  files; logits from `Llama(logits_all=True).eval(ids)` per window (its integer kernels
  quantize activations to 8 bits, so its rows compare with the "+q8a" rows).
* onnxruntime-genai int4 (`--ort`): its model builder (`-p int4 -e cpu`, MatMulNBits with
  blocks of 32); logits of every prompt position from `Generator.get_output("logits")`.

The peers run in child processes of `--peers-python` (an interpreter with llama_cpp and
onnxruntime_genai, e.g. the shared peers venv; default: this one), with this repository on
their PYTHONPATH; they score against the cached fp32 log-probs (`--ref-cache`, else a file in
`--work`), so one reference serves every candidate and every run.

Ids whose LM-head rows are identical (a checkpoint trained on part of the vocabulary, as
`tools/train_small.py` writes, has one shared row at every id its corpus lacks) are scored as
one class each (`quality.VocabGroups`): the same KL, top-1 and perplexity as over every id,
at a fraction of the cost; each window checks that the engine kept their logits equal.
`--no-groups` scores every id.

    python tools/eval_peers.py models/trained --work models/peers-trained \\
        --text models/trained/heldout.tokens.json --tokens 4096 --ort \\
        --recipes q8,q4,q4m --peers-python /work/venvs/peers/bin/python \\
        --llama-src /work/peers/llama_cpp_python-0.3.36/vendor/llama.cpp --json quality.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # the workers run in another venv, with the repo on the path
    sys.path.insert(0, str(REPO))

from qwen_edge.evaluation import quality  # noqa: E402  (numpy only: importable in the peers venv)

LLAMA_TYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
               "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the workers: run under --peers-python ----------------------------------------------------


def load_groups(path: str | None) -> quality.VocabGroups | None:
    if not path:
        return None
    with np.load(path) as z:
        return quality.VocabGroups(z["first"], z["log_size"], z["group_of"])


def _windows(spec: dict[str, Any]) -> tuple[list[list[int]], list[np.ndarray]]:
    wins = quality.windows(quality.read_token_file(spec["ids_file"]), spec["ctx"])
    stacked = np.load(spec["ref_cache"], mmap_mode="r")
    bounds = np.cumsum([len(w) - 1 for w in wins])[:-1]
    return wins, np.split(stacked, bounds)


def worker_convert(spec: dict[str, Any]) -> dict[str, Any]:
    src = Path(spec["llama_src"])
    env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), spec["checkpoint"], "--no-mtp",
           "--outtype", "bf16", "--outfile", spec["out"]]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return {"path": spec["out"]}


def worker_quantize(spec: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_TYPES[spec["kind"]])
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(spec["src"].encode(), spec["out"].encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed ({rc}) for {spec['kind']}")
    return {"path": spec["out"]}


def worker_build_ort(spec: dict[str, Any]) -> dict[str, Any]:
    out, cache = Path(spec["out"]), Path(spec["out"] + "-cache")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", spec["checkpoint"],
           "-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(cache)]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    # onnxruntime-genai 0.18 with onnxruntime 1.32 fails to load the LM head it shares with the
    # MTP model ("GetMemoryInfo for CPU should not be used"); scoring needs neither.
    cfg_path = out / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"].pop("shared_initializers", None)
    cfg["model"].pop("mtp", None)
    cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = 2
    cfg_path.write_text(json.dumps(cfg, indent=2))
    tok_cfg = out / "tokenizer_config.json"
    if tok_cfg.exists():  # the runtime rejects the class name Qwen3_5Tokenizer
        t = json.loads(tok_cfg.read_text())
        t["tokenizer_class"] = "Qwen2Tokenizer"
        tok_cfg.write_text(json.dumps(t, indent=2))
    shutil.rmtree(cache, ignore_errors=True)
    return {"path": str(out)}


def worker_score(spec: dict[str, Any]) -> dict[str, Any]:
    wins, cached = _windows(spec)
    ctx = spec["ctx"]
    if spec["engine"] == "gguf":
        from llama_cpp import Llama

        llm = Llama(spec["path"], n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, n_threads=2,
                    n_threads_batch=2, logits_all=True, verbose=False)  # fmt: skip

        def fn(ids: list[int]) -> np.ndarray:
            llm.reset()
            llm.eval(ids)
            out = np.array(llm.scores[: len(ids)], dtype=np.float32)
            if not np.any(out[-1]):
                raise SystemExit("llama.cpp returned no logits for the last position")
            return out

    else:
        import onnxruntime_genai as og

        model = og.Model(spec["path"])

        def fn(ids: list[int]) -> np.ndarray:
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ids) + 1)  # else it allocates 262k
            gen = og.Generator(model, params)
            gen.append_tokens(np.asarray(ids, np.int32))
            return np.asarray(gen.get_output("logits"), dtype=np.float32)[0]

    return quality.compare(cached, fn, wins, groups=load_groups(spec.get("groups"))).to_dict()


WORKERS = {"convert": worker_convert, "quantize": worker_quantize, "build-ort": worker_build_ort,
           "score": worker_score}  # fmt: skip


def run_worker(python: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Runs one worker in a child process of `python`; returns its JSON answer."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [python, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    out = subprocess.run(cmd, check=True, env=env, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- preparing the files ----------------------------------------------------------------------


def export_recipe(ckpt: Any, path: Path, recipe: str, calibration: Path | None = None) -> None:
    from qwen_edge.export import convert

    log(f"export {recipe} -> {path.name}")
    s = convert.export(ckpt, path, recipe, calibration=calibration)
    log(f"  {s.file_bytes / 1e6:.1f} MB in {s.seconds:.0f} s")


def llama_files(a: argparse.Namespace) -> list[tuple[str, Path]]:
    bf16 = a.work / f"{a.checkpoint.name}-bf16.gguf"
    if not bf16.exists():
        if a.llama_src is None:
            raise SystemExit(f"{bf16} is missing: pass --llama-src (the sdist's vendor/llama.cpp)")
        log(f"llama.cpp convert -> {bf16.name}")
        run_worker(a.peers_python, {"op": "convert", "llama_src": str(a.llama_src),
                                    "checkpoint": str(a.checkpoint), "out": str(bf16)})  # fmt: skip
    files = []
    for kind in LLAMA_TYPES:
        out = a.work / f"{a.checkpoint.name}-{kind}.gguf"
        if not out.exists():
            log(f"llama.cpp quantize -> {out.name}")
            run_worker(a.peers_python, {"op": "quantize", "kind": kind, "src": str(bf16),
                                        "out": str(out)})  # fmt: skip
        files.append((f"llama.cpp {kind}", out))
    return files


def ort_folder(a: argparse.Namespace) -> Path:
    out = a.work / f"{a.checkpoint.name}-ort-int4"
    if not out.exists():
        log(f"onnxruntime-genai builder -> {out.name}")
        run_worker(a.peers_python, {"op": "build-ort", "checkpoint": str(a.checkpoint),
                                    "out": str(out)})  # fmt: skip
    return out


def ort_bytes(folder: Path) -> int:
    """The decoder's bytes (model.onnx and its external data; the MTP model is left out, as
    in the other engines' files)."""
    return sum(p.stat().st_size for p in folder.glob("model.onnx*"))


def parse_variant(text: str) -> tuple[str, str, dict[str, str]]:
    from qwen_edge.export import convert

    name, _, spec = text.partition("=")
    recipe, _, ovs = spec.partition(":")
    return name, recipe, convert.parse_overrides([o for o in ovs.split(",") if o])


def variant_weights(
    ckpt: Any, base: Path, recipe: str, overrides: dict[str, str], calibration: Any = None
) -> tuple[Any, dict[str, np.ndarray], int, list[str]]:
    """Weights of `base` with the overridden tensors re-quantized (and, with a calibration,
    every packed tensor it names), the variant's file size and its packed tensors."""
    from qwen_edge.export import convert
    from qwen_edge.formats import quant
    from qwen_edge.formats.model_file import ModelFile

    shapes = ckpt.config.text_tensor_shapes()
    dtypes = {n: ckpt.info(n).dtype for n in shapes}
    formats = convert.plan_formats(shapes, recipe, overrides, source_dtypes=dtypes)
    size = base.stat().st_size
    weights = {}
    native = convert.native_quantizer("auto")
    with ModelFile(base) as mf:
        for name, shape in shapes.items():
            old = mf.tensors[name]
            imp = calibration.get(name) if calibration is not None else None
            if formats[name] == old.format and (imp is None or not quant.is_packed(old.format)):
                weights[name] = np.array(mf.dequantize(name))
                continue
            if not quant.is_packed(formats[name]):
                imp = None
            data = quant.quantize(formats[name], ckpt.read(name), native, imp)
            weights[name] = quant.dequantize(formats[name], data, shape)
            size += data.size - old.size
    packed = [n for n, f in formats.items() if n in shapes and quant.is_packed(f)]
    return ckpt.config, weights, size, packed


# --- the reference ----------------------------------------------------------------------------


def vocab_groups(a: argparse.Namespace, ckpt: Any) -> tuple[quality.VocabGroups | None, str]:
    """The checkpoint's groups of identical LM-head rows (`quality.VocabGroups`), also saved
    for the workers; (None, "") with --no-groups or when every row is distinct."""
    if a.no_groups:
        return None, ""
    head = "embed_tokens.weight" if ckpt.config.tie_word_embeddings else "lm_head.weight"
    groups = quality.VocabGroups.of_rows(ckpt.read(head))
    if groups is None:
        return None, ""
    path = a.work / f"{a.checkpoint.name}-groups.npz"
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.npz")  # parallel runs write it too
    np.savez(tmp, first=groups.first, log_size=groups.log_size, group_of=groups.group_of)
    os.replace(tmp, path)
    log(f"{groups.size:,} classes of identical LM-head rows for {groups.group_of.size:,} ids")
    return groups, str(path)


def reference_cache(
    a: argparse.Namespace,
    ckpt: Any,
    ids: list[int],
    wins: list[list[int]],
    groups: quality.VocabGroups | None,
) -> tuple[Path, list[np.ndarray]]:
    """The fp32 log-probs of every scored position, cached in a .npy file (with a .json beside
    it naming the checkpoint, window length, ids and groups, so a stale cache is an error)."""
    from qwen_edge.backends.reference import ReferenceModel

    weights = a.checkpoint / "model.safetensors"
    key = {
        "checkpoint": str(a.checkpoint.resolve()),
        "checkpoint_bytes": weights.stat().st_size if weights.exists() else None,
        "ctx": a.ctx,
        "ids_sha256": hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest(),
        "groups": groups.size if groups is not None else None,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = a.ref_cache or a.work / f"{a.checkpoint.name}-ref-{digest}.npy"
    meta = path.with_suffix(".json")
    if path.exists():
        if not meta.exists() or json.loads(meta.read_text()) != key:
            raise SystemExit(f"{path} was made for other tokens or another checkpoint")
        stacked = np.load(path, mmap_mode="r")
    else:
        log(f"fp32 reference on {len(wins)} windows of {a.ctx} tokens -> {path.name}")
        ref = ReferenceModel.from_checkpoint(ckpt, context=a.ctx)
        if groups is not None:
            quality.restrict_lm_head(ref, groups)
        rows = sum(len(w) - 1 for w in wins)
        tmp = path.with_name(path.name + ".tmp.npy")
        cols = groups.size if groups is not None else ckpt.config.vocab_size
        out = np.lib.format.open_memmap(tmp, "w+", np.float32, (rows, cols))
        r = 0
        for lp in quality.reference_logprobs(quality.reference_fn(ref), wins, groups):
            out[r : r + len(lp)] = lp
            r += len(lp)
        out.flush()
        del out, ref
        os.replace(tmp, path)
        meta.write_text(json.dumps(key, indent=1) + "\n")
        stacked = np.load(path, mmap_mode="r")
    bounds = np.cumsum([len(w) - 1 for w in wins])[:-1]
    return path, np.split(stacked, bounds)


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, nargs="?")
    p.add_argument("--work", type=Path, help="folder for the exported files and the cache")
    p.add_argument("--text", type=Path, help="token file (.json) or UTF-8 text to score on")
    p.add_argument("--tokens", type=int, help="first N tokens of the text (default: all)")
    p.add_argument("--ctx", type=int, default=quality.DEFAULT_CTX)
    p.add_argument(
        "--recipes", default="q8,q4",
        help="qwen-edge recipes to export (if missing) and score, comma-separated",
    )  # fmt: skip
    p.add_argument("--variant", action="append", default=[], help="NAME=RECIPE[:GLOB=FMT,...]")
    p.add_argument(
        "--calibration", type=Path, metavar="FILE",
        help="activation-aware quantization for the recipes and variants (an .npz of "
        "tools/activation_stats.py --calibration)",
    )  # fmt: skip
    p.add_argument(
        "--act", choices=["weights", "q8a", "both"], default="both",
        help="qwen-edge rows: weight quantization only, with q8a activations, or both rows",
    )  # fmt: skip
    p.add_argument("--act-q8", action="store_true", help="the same as --act q8a")
    p.add_argument("--no-llama", action="store_true", help="leave llama.cpp out")
    p.add_argument("--llama-src", type=Path, help="llama.cpp sources (for the GGUF converter)")
    p.add_argument("--ort", action="store_true", help="also onnxruntime-genai int4")
    p.add_argument(
        "--peers-python", default=sys.executable,
        help="python with llama_cpp and onnxruntime_genai (default: this one)",
    )  # fmt: skip
    p.add_argument("--only", action="append", help="score only these labels (repeatable)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--ref-cache", type=Path, help="the fp32 log-probs' cache file (.npy)")
    p.add_argument(
        "--prepare-only", action="store_true",
        help="only export the recipes and make the peers' files (no scoring)",
    )  # fmt: skip
    p.add_argument(
        "--reference-only", action="store_true",
        help="only compute the fp32 reference cache (then run scorers in parallel on it)",
    )  # fmt: skip
    p.add_argument(
        "--no-groups", action="store_true",
        help="score every id even where LM-head rows repeat (see quality.VocabGroups)",
    )  # fmt: skip
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        print(json.dumps(WORKERS[spec["op"]](spec)))
        return 0
    if a.checkpoint is None or a.work is None:
        p.error("the checkpoint and --work are required")
    if a.act_q8:
        a.act = "q8a"

    from qwen_edge.backends.reference import ReferenceModel
    from qwen_edge.formats.checkpoint import Checkpoint

    a.work.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint(a.checkpoint)
    params = sum(ckpt.info(n).numel for n in ckpt.config.text_tensor_shapes())
    ids = quality.eval_tokens(a.tokens, a.text, a.checkpoint / "tokenizer.json")
    if max(ids) >= ckpt.config.vocab_size:
        raise SystemExit(f"the text uses ids up to {max(ids)}, beyond the vocabulary")
    wins = quality.windows(ids, a.ctx)
    sha = hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()[:12]
    ids_file = a.work / f"scored-{sha}.tokens.json"  # what the workers read
    if not ids_file.exists():  # parallel runs on the same ids share it
        tmp = ids_file.with_name(f"{ids_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"text": str(a.text or "shipped"), "ids": ids}) + "\n")
        os.replace(tmp, ids_file)

    candidates: list[tuple[str, str, Any]] = []  # (label, kind, what)
    files = {}
    acts = {"weights": [False], "q8a": [True], "both": [False, True]}[a.act]
    calib, tag = None, ""
    if a.calibration:
        from qwen_edge.export import convert

        calib, tag = convert.read_calibration(a.calibration), a.calibration.stem
    for recipe in filter(None, a.recipes.split(",")):
        path = files[recipe] = a.work / f"{a.checkpoint.name}-{recipe}{'-' * bool(tag)}{tag}.qe"
        for q8a in acts:
            label = f"qwen-edge {recipe}{'/' * bool(tag)}{tag}" + " +q8a" * q8a
            candidates.append((label, "qe", (path, q8a)))
    for name, recipe, ovs in map(parse_variant, a.variant):
        files.setdefault(recipe, a.work / f"{a.checkpoint.name}-{recipe}{'-' * bool(tag)}{tag}.qe")
        for q8a in acts:
            label = f"qwen-edge {name}" + " +q8a" * q8a
            candidates.append((label, "variant", (recipe, ovs, q8a)))

    def want(label: str) -> bool:
        return not a.only or label in a.only

    candidates = [c for c in candidates if want(c[0])]
    peers: list[tuple[str, str, Any]] = []
    if a.reference_only:
        candidates = []
    elif not a.no_llama and any(want(f"llama.cpp {k}") for k in LLAMA_TYPES):
        peers += [(label, "gguf", path) for label, path in llama_files(a) if want(label)]
    if a.ort and want("onnxruntime-genai int4") and not a.reference_only:
        peers.append(("onnxruntime-genai int4", "ort", ort_folder(a)))
    for recipe, path in files.items():
        needed = a.prepare_only or any(
            (k == "qe" and w[0] == path) or (k == "variant" and w[0] == recipe)
            for _, k, w in candidates
        )
        if needed and not path.exists():
            export_recipe(ckpt, path, recipe, a.calibration)

    if a.prepare_only:
        return 0
    groups, groups_file = vocab_groups(a, ckpt)
    cache, cached = reference_cache(a, ckpt, ids, wins, groups)
    if a.reference_only:
        log(f"fp32 reference: {cache}")
        return 0
    results = []
    for label, kind, what in candidates + peers:
        log(f"scoring {label}")
        start = time.perf_counter()
        if kind in ("qe", "variant"):
            if kind == "qe":
                path, q8a = what
                config, weights = quality.model_file_weights(path)
                size, packed = path.stat().st_size, quality.packed_tensors(path)
            else:
                recipe, ovs, q8a = what
                config, weights, size, packed = variant_weights(
                    ckpt, files[recipe], recipe, ovs, calib
                )
            model = ReferenceModel(config, weights, context=a.ctx)
            del weights
            if q8a:
                quality.with_q8a_inputs(model, packed)
            if groups is not None:
                quality.restrict_lm_head(model, groups)
            fn = quality.reference_fn(model)
            report = quality.compare(cached, fn, wins, groups=groups).to_dict()
            del model
        else:
            spec = {"op": "score", "engine": kind, "path": str(what), "ids_file": str(ids_file),
                    "ref_cache": str(cache), "ctx": a.ctx, "groups": groups_file}  # fmt: skip
            report = run_worker(a.peers_python, spec)
            size = what.stat().st_size if kind == "gguf" else ort_bytes(what)
        row = {"format": label, "file_bytes": size, "bits_per_weight": 8 * size / params,
               **report, "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        log(json.dumps(row))
        results.append(row)
        if a.json:  # after every row: a long run keeps what it measured
            doc = {"checkpoint": str(a.checkpoint), "text": str(a.text or "shipped"),
                   "parameters": params, "ctx": a.ctx, "windows": len(wins),
                   "positions": sum(len(w) - 1 for w in wins), "results": results}  # fmt: skip
            a.json.write_text(json.dumps(doc, indent=2) + "\n")

    if not results:
        raise SystemExit("nothing to score (check --only)")
    print(f"\n{params:,} text parameters; {results[0]['tokens']} positions in {len(wins)} "
          f"windows of {a.ctx} tokens; KL in nats vs the fp32 reference\n")  # fmt: skip
    print("| format | file size | bits/weight | mean KL | p99 KL | top-1 | PPL ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['format']} | {r['file_bytes'] / 1e6:.2f} MB | {r['bits_per_weight']:.3f} | "
              f"{r['mean_kl']:.6f} | {r['p99_kl']:.6f} | {100 * r['top1']:.2f} % | "
              f"{r['ppl_ratio']:.5f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
