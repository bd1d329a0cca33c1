"""`qwen-edge tokenize`: the token ids of a text, or the text of ids."""

from __future__ import annotations

import argparse
import json

from ..errors import QwenEdgeError
from .common import add_tokenizer_backend_argument, read_text

HELP = "show the token ids of a text (or the text of ids)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file, checkpoint folder or tokenizer.json")
    p.add_argument("text", help="text to encode (or ids with --detokenize); - reads stdin")
    p.add_argument("--detokenize", action="store_true", help="decode token ids into text")
    p.add_argument(
        "--special", action="store_true", help="parse control tokens such as <|im_start|>"
    )
    p.add_argument("--json", action="store_true", help="print JSON with ids and token texts")
    add_tokenizer_backend_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..generation.llm import load_assets

    tokenizer = load_assets(args.model, args.tokenizer_backend).require_tokenizer()
    text = read_text(args.text, "the input")
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
