"""onnxruntime-genai's files beside an exported graph (docs/onnx.md, `--genai`):
`genai_config.json` (model type `qwen3_5_text`, the graph's I/O names), `tokenizer_config.json`
and `chat_template.jinja`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..formats.atomic_files import write_atomically
from ..formats.config import ModelConfig


def genai_config(config: ModelConfig, header: dict[str, Any], filename: str,
                 threads: int = 0) -> dict[str, Any]:  # fmt: skip
    """genai_config.json for the graph file `filename`: model type `qwen3_5_text` and the I/O
    names `onnx_export` gives the graph; `threads` sets intra_op_num_threads (0: genai's default,
    every core)."""
    special = header.get("special_tokens", {})
    gen = header.get("generation", {})
    eos = special.get("eos") or list(config.eos_token_id)
    pad = special.get("pad", eos[0] if eos else 0)
    options = [] if not threads else None
    session: dict[str, Any] = {"log_id": "onnxruntime-genai", "provider_options": []}
    if options is None:
        session["intra_op_num_threads"] = threads
    return {
        "model": {
            "bos_token_id": special.get("bos", pad),
            "context_length": config.max_position_embeddings,
            "decoder": {
                "session_options": session,
                "filename": filename,
                "head_size": config.head_dim,
                "hidden_size": config.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                    "past_conv_names": "past.%d.conv",
                    "past_recurrent_names": "past.%d.recurrent",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                    "present_conv_names": "present.%d.conv",
                    "present_recurrent_names": "present.%d.recurrent",
                },
                "num_attention_heads": config.num_attention_heads,
                "num_hidden_layers": config.num_hidden_layers,
                "num_key_value_heads": config.num_key_value_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": "qwen3_5_text",
            "vocab_size": config.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": bool(gen.get("do_sample", False)),
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": config.max_position_embeddings,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": float(gen.get("repetition_penalty", 1.0)),
            "temperature": float(gen.get("temperature", 1.0)),
            "top_k": int(gen.get("top_k", 1) or 1),
            "top_p": float(gen.get("top_p", 1.0)),
        },
    }


def write_genai_files(config: ModelConfig, header: dict[str, Any], output: Path,
                      threads: int = 0) -> None:  # fmt: skip
    """genai_config.json and the tokenizer files beside the graph `output`."""
    folder = output.parent
    cfg = genai_config(config, header, output.name, threads)
    write_text(folder / "genai_config.json", json.dumps(cfg, indent=4) + "\n")
    # onnxruntime-genai's tokenizer reads tokenizer_config.json and accepts only class names it
    # knows: Qwen3.5's tokenizer is Qwen2's byte-level BPE.
    special = header.get("special_tokens", {})
    tok_cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "eos_token": special.get("eos_token"),
        "pad_token": special.get("pad_token"),
        "bos_token": special.get("bos_token"),
        "model_max_length": config.max_position_embeddings,
    }
    write_text(folder / "tokenizer_config.json", json.dumps(tok_cfg, indent=2) + "\n")
    if header.get("chat_template"):
        write_text(folder / "chat_template.jinja", header["chat_template"])


def write_text(path: Path, text: str) -> None:
    """`write_bytes` of the UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Writes a file beside the graph atomically (`write_atomically`: a temporary name of its
    own, so concurrent exports never mix)."""
    write_atomically(path, data)
