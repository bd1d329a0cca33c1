#!/usr/bin/env python3
"""Plain greedy decoding against MTP speculative decoding, alternating in one run -> JSON.

    python tools/bench_speculative.py models/trained-q8-mtp.qe --tokenizer models/tokenizer \\
        --threads 1,2 --draft-tokens 1,2,3 --draft-rows 16384,0 --json spec.json
    python tools/bench_speculative.py models/rand-0.8b-q4-mtp.qe --verify-cost --json cost.json

Decode: for every prompt, thread count and repetition, plain greedy decoding and each
speculative setting (draft tokens x draft rows) run one after the other (the order rotates per
repetition), each from a fresh state; tokens/s counts the tokens after the first over the time
after it. Every speculative run's tokens are compared with the plain run's (`identical`). The
record has acceptance, tokens per verification, where the time goes (draft, verify, rollback,
sampling) and the weight bytes read per generated token.

--verify-cost: the time of one checkpointed forward over k tokens (all logits) against k
single-token decode steps, k = 1..8, after a prompt: what a verification costs, whatever the
acceptance (docs/speculative.md).
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


def verify_cost(model: Model, prompt_len: int, reps: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    ids = [int(t) for t in rng.integers(0, min(model.config.vocab_size, 30000), prompt_len + 8)]
    rows = []
    for k in range(1, 9):
        single, batch, csingle, cbatch, cplain = [], [], [], [], []
        out = np.empty((k, model.config.vocab_size), np.float32)  # reused: no page faults timed
        for rep in range(reps):
            s = model.new_state()
            s.enable_speculation(8)
            model.forward(ids[:prompt_len], s)
            snap = s.copy()
            # touch the checkpoint slots once: a generation reuses its state, so their first
            # page faults are not a verification's cost
            model.forward(ids[prompt_len : prompt_len + 8], s, all_logits=True, checkpoint=True)
            s.restore(snap)
            t0, c0 = time.perf_counter(), time.process_time()
            for t in ids[prompt_len : prompt_len + k]:
                model.forward([t], s)
            single.append(time.perf_counter() - t0)
            csingle.append(time.process_time() - c0)
            # with checkpoints (+ rollback), and the same forward without them: what they cost
            # (docs/speculative.md); alternating which runs first
            for checkpoint in (True, False) if rep % 2 == 0 else (False, True):
                s.restore(snap)
                t0, c0 = time.perf_counter(), time.process_time()
                model.forward(
                    ids[prompt_len : prompt_len + k], s, all_logits=True, checkpoint=checkpoint,
                    out=out,
                )  # fmt: skip
                if checkpoint:
                    s.rollback(k - 1)
                    batch.append(time.perf_counter() - t0)
                    cbatch.append(time.process_time() - c0)
                else:
                    cplain.append(time.process_time() - c0)
        # the minimum: on a shared machine the least disturbed run is the closest to the cost
        one, many = float(np.min(single)), float(np.min(batch))
        rows.append({
            "k": k, "k_single_steps_s": one, "verify_k_s": many,
            "k_single_steps_median_s": float(np.median(single)),
            "verify_k_median_s": float(np.median(batch)),
            "k_single_steps_cpu_s": float(np.min(csingle)), "verify_k_cpu_s": float(np.min(cbatch)),
            "verify_k_no_checkpoint_cpu_s": float(np.min(cplain)),
            "verify_over_one_step": many / (one / k), "speedup_if_all_accepted": one / many,
        })  # fmt: skip
        print(f"k={k}: {k} steps {one * 1e3:.1f} ms, one verify of {k} (+rollback) "
              f"{many * 1e3:.1f} ms = {many / (one / k):.2f} single steps; by CPU time "
              f"{np.min(cbatch) / (np.min(csingle) / k):.2f}, without checkpoints "
              f"{np.min(cplain) / (np.min(csingle) / k):.2f}", flush=True)  # fmt: skip
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
        for n in threads:
            model = Model.load(args.model, threads=n, context=args.max_tokens + 256)
            if not model.has_mtp:
                sys.exit(f"{args.model} has no MTP head: export it with --mtp")
            results: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(specs))}
            for rep in range(args.repetitions):
                for pi, ids in enumerate(prompts):
                    order = list(range(len(specs)))
                    shift = (rep + pi) % len(order)
                    for i in order[shift:] + order[:shift]:  # alternate who runs first
                        r = decode(model, ids, args.max_tokens, specs[i])
                        r["prompt"] = pi
                        results[i].append(r)
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
