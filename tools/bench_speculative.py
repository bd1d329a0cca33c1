#!/usr/bin/env python3
"""Plain greedy decoding against MTP speculative decoding, alternating in one run -> JSON.

    python tools/bench_speculative.py models/trained-q8-mtp.qe --tokenizer models/tokenizer \\
        --threads 1,2 --draft-tokens 1,2,3 --draft-rows 16384,0 --json spec.json
    python tools/bench_speculative.py models/rand-0.8b-q4-mtp.qe --verify-cost --json cost.json
    # llama.cpp beside ours: its plain decoding and its own MTP speculation (draft-mtp)
    python tools/bench_speculative.py models/trained-q8-mtp.qe --tokenizer models/tokenizer \
        --llama-server PEERS/build-server/bin/llama-server --gguf models/trained-Q8_0.gguf

Decode: for every prompt, thread count and repetition, plain greedy decoding and each
speculative setting (draft tokens x draft rows) run one after the other (the order rotates per
repetition), each from a fresh state; tokens/s counts the tokens after the first over the time
after it. Every speculative run's tokens are compared with the plain run's (`identical`). The
record has acceptance, tokens per verification, where the time goes (draft, verify, rollback,
sampling) and the weight bytes read per generated token.

--llama-server/--gguf: llama.cpp's llama-server on the same checkpoint (a GGUF converted with
the MTP layer, convert_hf_to_gguf.py without --no-mtp), two servers per thread count, plain
and `--spec-type draft-mtp` (llama.cpp's own Qwen3.5 MTP speculation, at most --llama-draft
drafts), in the same alternation as ours: a greedy completion of --max-tokens minus one of 1
token over the same prompt ids; CPU time of the server process. Their ratios are to our plain
decoding; `identical` compares llama.cpp's speculative tokens with its own plain ones.

--verify-cost: the time of one forward over k tokens (all logits) against k single-token
decode steps, k = 1..8, after a prompt: what a verification costs, whatever the acceptance,
checkpointed and rolled back (keeping every token or only the first) and without checkpoints
(docs/speculative.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from qwen_edge.backends.native import Model
from qwen_edge.generation.loop import generate_step
from qwen_edge.generation.speculative import SpeculativeStats, speculative_step

PROMPTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune,",
    "Mr. Darcy walked towards the window, and Elizabeth",
    "The family of Dashwood had long been settled in Sussex.",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition,",
]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def greedy(logits: np.ndarray) -> tuple[int, None]:
    return int(np.argmax(logits)), None


def decode(model: Model, ids: list[int], n: int, spec: dict[str, Any] | None) -> dict[str, Any]:
    """n tokens from a fresh state; tokens/s over the tokens after the first."""
    stats = SpeculativeStats()
    if spec is None:
        steps = generate_step(model, ids, greedy)
    else:
        steps = speculative_step(
            model, ids, greedy, draft_tokens=spec["draft_tokens"],
            draft_rows=spec["draft_rows"] or None, adaptive=spec["adaptive"], stats=stats,
        )  # fmt: skip
    tokens = [next(steps)[0]]
    t0, c0 = time.perf_counter(), time.process_time()
    while len(tokens) < n:
        tokens.append(next(steps)[0])
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps.close()
    out: dict[str, Any] = {
        "tokens": tokens, "tok_s": (n - 1) / elapsed, "seconds": elapsed,
        "cpu_tok_s": (n - 1) / cpu,  # by CPU time: on a shared machine, robust to waiting
    }  # fmt: skip
    if spec is not None:
        out["stats"] = stats.to_dict()
        rows = spec["draft_rows"] or None
        draft_steps = stats.drafted  # one MTP step per draft (the catch-up pairs ride along)
        out["bytes_per_token"] = (
            stats.rounds * model.decode_weight_bytes + draft_steps * model.mtp_weight_bytes(rows)
        ) / max(stats.emitted, 1)
    else:
        out["bytes_per_token"] = model.decode_weight_bytes
    return out


# --- llama.cpp beside ours (--llama-server): its plain decoding and its own MTP speculation ---
class LlamaServer:
    """A llama-server on `gguf` (converted with its MTP layer kept: convert_hf_to_gguf.py
    without --no-mtp), greedy completions over token ids; `draft`: --spec-type draft-mtp with
    at most that many drafts (llama.cpp's Qwen3.5 MTP speculation), else plain decoding."""

    def __init__(self, binary: str, gguf: str, threads: int, draft: int | None, context: int):
        import socket
        import subprocess

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        args = [binary, "-m", gguf, "-t", str(threads), "-tb", str(threads), "-c", str(context),
                "-np", "1", "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip
        if draft:
            args += ["--spec-type", "draft-mtp", "--spec-draft-n-max", str(draft),
                     "--spec-draft-n-min", "0"]  # fmt: skip
        self.args = args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while True:
            try:
                if self._get("/health").get("status") == "ok":
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.close()
                sys.exit(f"llama-server did not start ({' '.join(args)}):\n{err[-2000:]}")
            time.sleep(0.2)

    def _get(self, path: str) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        import os

        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def complete(self, ids: list[int], n: int) -> tuple[dict[str, Any], float, float]:
        """A greedy completion of n tokens: (the response, wall seconds, CPU seconds)."""
        import urllib.request

        body = {"prompt": ids, "n_predict": n, "temperature": 0.0, "top_k": 1,
                "cache_prompt": False, "ignore_eos": True, "return_tokens": True}  # fmt: skip
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/completion", json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        t0, c0 = time.perf_counter(), self.cpu_seconds()
        with urllib.request.urlopen(req, timeout=600) as r:
            out = json.loads(r.read())
        return out, time.perf_counter() - t0, self.cpu_seconds() - c0

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def decode_llama(server: LlamaServer, ids: list[int], n: int) -> dict[str, Any]:
    """As `decode`: n tokens, rates over the tokens after the first (a completion of n tokens
    minus one of 1 token, which prefills the same prompt; CPU time of the server process, in
    clock ticks, so the runs should be long enough)."""
    _, w1, c1 = server.complete(ids, 1)
    out, wn, cn = server.complete(ids, n)
    t = out.get("timings", {})
    return {
        "tokens": [int(x) for x in out.get("tokens", [])],
        "tok_s": (n - 1) / max(wn - w1, 1e-9),
        "cpu_tok_s": (n - 1) / max(cn - c1, 1e-9),
        "seconds": wn - w1,
        "llama_timings": t,
        "drafted": int(t.get("draft_n", 0)),
        "accepted": int(t.get("draft_n_accepted", 0)),
    }


def verify_cost(model: Model, prompt_len: int, reps: int) -> list[dict[str, Any]]:
    """Per k = 1..8: k single decode steps, and one forward over k tokens (all logits):
    checkpointed ("replay": a copy of the DeltaNet states before it, the delta rule's inputs)
    and followed by a rollback keeping every token ("accept") or only the first ("reject": it
    reruns one token's delta rule), and without checkpoints ("none": the floor). CPU and wall
    time, minimum over `reps` (the least disturbed run on a shared machine)."""
    rng = np.random.default_rng(0)
    ids = [int(t) for t in rng.integers(0, min(model.config.vocab_size, 30000), prompt_len + 8)]
    rows = []
    s = model.new_state()
    s.enable_speculation(8)
    model.forward(ids[:prompt_len], s)
    snap = s.copy()
    # touch the checkpoint buffers once: a generation reuses its state, so their first page
    # faults are not a verification's cost
    model.forward(ids[prompt_len : prompt_len + 8], s, all_logits=True, checkpoint=True)
    runs = [("replay", 0), ("replay", 1), ("none", 0)]
    for k in range(1, 9):
        out = np.empty((k, model.config.vocab_size), np.float32)  # reused: no page faults timed
        single, csingle = [], []
        wall: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        for rep in range(reps):
            s.restore(snap)
            t0, c0 = time.perf_counter(), time.process_time()
            for t in ids[prompt_len : prompt_len + k]:
                model.forward([t], s)
            single.append(time.perf_counter() - t0)
            csingle.append(time.process_time() - c0)
            shift = rep % len(runs)  # alternate who runs first
            for mode, reject in runs[shift:] + runs[:shift]:
                s.restore(snap)
                t0, c0 = time.perf_counter(), time.process_time()
                model.forward(
                    ids[prompt_len : prompt_len + k], s, all_logits=True,
                    checkpoint=mode != "none", out=out,
                )  # fmt: skip
                if mode != "none":
                    s.rollback(k - 1 if reject else 0)
                name = mode if mode == "none" else f"{mode}_{'reject' if reject else 'accept'}"
                wall.setdefault(name, []).append(time.perf_counter() - t0)
                cpu.setdefault(name, []).append(time.process_time() - c0)
        step = float(np.min(csingle)) / k
        row: dict[str, Any] = {
            "k": k, "k_single_steps_s": float(np.min(single)),
            "k_single_steps_cpu_s": float(np.min(csingle)),
        }  # fmt: skip
        for name in wall:
            row[f"verify_{name}_s"] = float(np.min(wall[name]))
            row[f"verify_{name}_cpu_s"] = float(np.min(cpu[name]))
            row[f"verify_{name}_steps"] = float(np.min(cpu[name])) / step
        rows.append(row)
        print(f"k={k}: by CPU time in single steps: " + "  ".join(
            f"{name} {row[f'verify_{name}_steps']:.3f}" for name in wall), flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a .qe model file exported with --mtp")
    p.add_argument("--tokenizer", help="tokenizer folder for the text prompts (else random ids)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--draft-tokens", default="1,2,3", help="comma-separated draft lengths")
    p.add_argument("--draft-rows", default="16384,0", help="draft LM-head rows (0: all)")
    p.add_argument("--fixed", action="store_true", help="also run each length without adapting")
    p.add_argument("--repetitions", type=int, default=2, help="(--verify-cost: per length, min)")
    p.add_argument("--prompts", type=int, default=len(PROMPTS))
    p.add_argument("--verify-cost", action="store_true", help="measure verify-k vs k steps")
    p.add_argument("--json", help="write the record here")
    p.add_argument("--llama-server", help="llama-server binary: add llama.cpp's decoding")
    p.add_argument("--gguf", help="the same checkpoint as GGUF with its MTP layer (llama.cpp)")
    p.add_argument(
        "--llama-draft", type=int, default=2, help="llama.cpp draft-mtp's most drafts (0: none)"
    )
    args = p.parse_args(argv)

    threads = [int(x) for x in args.threads.split(",")]
    record: dict[str, Any] = {
        "schema": "qwen-edge-bench-speculative/1",
        "model": args.model,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.machine(),
        "runs": [],
    }
    if args.verify_cost:
        for n in threads:
            model = Model.load(args.model, threads=n, context=1024)
            print(f"threads {n}: decode reads {model.decode_weight_bytes / 1e6:.0f} MB per step")
            record["runs"].append(
                {"threads": n, "verify_cost": verify_cost(model, 64, args.repetitions)}
            )
    else:
        if args.tokenizer:
            from qwen_edge.generation.tokenizer import Tokenizer

            tok = Tokenizer.from_file(Path(args.tokenizer) / "tokenizer.json")
            prompts = [tok.encode(t) for t in PROMPTS[: args.prompts]]
        else:
            rng = np.random.default_rng(0)
            prompts = [[int(t) for t in rng.integers(0, 30000, 16)] for _ in range(args.prompts)]
        specs: list[dict[str, Any] | None] = [None]
        for rows in [int(x) for x in args.draft_rows.split(",")]:
            for k in [int(x) for x in args.draft_tokens.split(",")]:
                for adaptive in (True, False) if args.fixed else (True,):
                    specs.append({"draft_tokens": k, "draft_rows": rows, "adaptive": adaptive})
        if args.llama_server and not args.gguf:
            sys.exit("--llama-server needs --gguf")
        llama = [None, args.llama_draft or None] if args.llama_server else []
        for n in threads:
            model = Model.load(args.model, threads=n, context=args.max_tokens + 256)
            if not model.has_mtp:
                sys.exit(f"{args.model} has no MTP head: export it with --mtp")
            if not args.tokenizer:  # random ids: within this model's vocabulary
                prompts = [[t % model.config.vocab_size for t in ids] for ids in prompts]
            servers = [
                LlamaServer(args.llama_server, args.gguf, n, d, args.max_tokens + 256)
                for d in llama
            ]
            engines: list[Any] = [*specs, *servers]
            results: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(engines))}
            try:
                for rep in range(args.repetitions):
                    for pi, ids in enumerate(prompts):
                        order = list(range(len(engines)))
                        shift = (rep + pi) % len(order)
                        for i in order[shift:] + order[:shift]:  # alternate who runs first
                            e = engines[i]
                            if isinstance(e, LlamaServer):
                                r = decode_llama(e, ids, args.max_tokens)
                            else:
                                r = decode(model, ids, args.max_tokens, e)
                            r["prompt"] = pi
                            results[i].append(r)
            finally:
                for server in servers:
                    server.close()
            plain = {r["prompt"]: r["tokens"] for r in results[0]}
            rows = []
            base = float(np.mean([r["tok_s"] for r in results[0]]))
            cpu_base = float(np.mean([r["cpu_tok_s"] for r in results[0]]))
            for i, spec in enumerate(specs):
                rs = results[i]
                row: dict[str, Any] = {
                    "speculative": spec,
                    "tok_s_mean": float(np.mean([r["tok_s"] for r in rs])),
                    "tok_s_std": float(np.std([r["tok_s"] for r in rs])),
                    "cpu_tok_s_mean": float(np.mean([r["cpu_tok_s"] for r in rs])),
                    "bytes_per_token": float(np.mean([r["bytes_per_token"] for r in rs])),
                    "identical": all(r["tokens"] == plain[r["prompt"]] for r in rs),
                }
                row["ratio_vs_plain"] = row["tok_s_mean"] / base
                row["cpu_ratio_vs_plain"] = row["cpu_tok_s_mean"] / cpu_base
                if spec is not None:
                    st = [r["stats"] for r in rs]
                    tot = {
                        key: float(sum(s[key] for s in st))
                        for key in ("rounds", "drafted_tokens", "accepted_tokens",
                                    "draft_time_s", "verify_time_s", "rollback_time_s",
                                    "sample_time_s")
                    }  # fmt: skip
                    row["acceptance_rate"] = tot["accepted_tokens"] / max(tot["drafted_tokens"], 1)
                    row["tokens_per_verify"] = (tot["accepted_tokens"] + tot["rounds"]) / max(
                        tot["rounds"], 1
                    )
                    secs = sum(r["seconds"] for r in rs)
                    row["time_share"] = {
                        k[:-7]: tot[k] / secs
                        for k in ("draft_time_s", "verify_time_s", "rollback_time_s",
                                  "sample_time_s")
                    }  # fmt: skip
                    per_round = max(tot["rounds"], 1)
                    row["ms_per_round"] = {
                        k[:-7]: 1e3 * tot[k] / per_round
                        for k in ("draft_time_s", "verify_time_s", "rollback_time_s")
                    }
                rows.append(row)
                label = (
                    "plain"
                    if spec is None
                    else f"k={spec['draft_tokens']}{'' if spec['adaptive'] else ' fixed'} "
                    f"rows={spec['draft_rows'] or 'all'}"
                )
                extra = (
                    ""
                    if spec is None
                    else f"  accept {row['acceptance_rate']:.0%}  "
                    f"{row['tokens_per_verify']:.2f} tok/verify  "
                    + " ".join(f"{k} {v:.0%}" for k, v in row["time_share"].items())
                )
                print(
                    f"threads {n} {label:>22}: {row['tok_s_mean']:7.1f} tok/s "
                    f"x{row['ratio_vs_plain']:.2f} (cpu x{row['cpu_ratio_vs_plain']:.2f})  "
                    f"identical {row['identical']}{extra}",
                    flush=True,
                )
            llama_plain = {r["prompt"]: r["tokens"] for r in results.get(len(specs), [])}
            for j, server in enumerate(servers):
                rs = results[len(specs) + j]
                drafted = sum(r["drafted"] for r in rs)
                row = {
                    "engine": "llama.cpp", "command": server.args[1:],
                    "speculative": {"method": "draft-mtp", "draft_tokens": llama[j]}
                    if llama[j] else None,
                    "tok_s_mean": float(np.mean([r["tok_s"] for r in rs])),
                    "tok_s_std": float(np.std([r["tok_s"] for r in rs])),
                    "cpu_tok_s_mean": float(np.mean([r["cpu_tok_s"] for r in rs])),
                    # its tokens against its own plain decoding, and how many agree with ours
                    "identical": all(r["tokens"] == llama_plain[r["prompt"]] for r in rs),
                    "same_as_ours": float(np.mean([
                        _common_prefix(r["tokens"], plain[r["prompt"]]) / len(plain[r["prompt"]])
                        for r in rs
                    ])),
                    "acceptance_rate": (sum(r["accepted"] for r in rs) / drafted
                                        if drafted else None),
                }  # fmt: skip
                row["ratio_vs_plain"] = row["tok_s_mean"] / base
                row["cpu_ratio_vs_plain"] = row["cpu_tok_s_mean"] / cpu_base
                rows.append(row)
                label = f"llama.cpp {'draft-mtp k=' + str(llama[j]) if llama[j] else 'plain'}"
                acc = row["acceptance_rate"]
                print(
                    f"threads {n} {label:>22}: {row['tok_s_mean']:7.1f} tok/s "
                    f"x{row['ratio_vs_plain']:.2f} (cpu x{row['cpu_ratio_vs_plain']:.2f})  "
                    f"identical {row['identical']}  same as ours {row['same_as_ours']:.0%}"
                    + (f"  accept {acc:.0%}" if acc is not None else ""),
                    flush=True,
                )
            record["runs"].append({
                "threads": n, "decode_weight_bytes": model.decode_weight_bytes,
                "max_tokens": args.max_tokens, "rows": rows,
            })  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
