"""Coverage-guided fuzzers (atheris) of the Python readers of untrusted input.

    python tests/fuzz/fuzz_python.py TARGET [libFuzzer flags, e.g. -max_total_time=60 CORPUS]

Targets: `config` (config.json -> ModelConfig), `model_file` (bytes -> the Python model-file
reader, with CRCs), `request` (an HTTP body -> the OpenAI request parser), `chat` (messages and
model output: the chat template's validation and tool-call parsing), `tokenizer`
(tokenizer.json -> Tokenizer, then encode and decode). Each input must end in a value or in
the project's own error for that reader; anything else is a finding (atheris prints the input
and exits non-zero). `tools/fuzz.sh` runs them all; tests/fuzz/test_corpus.py replays the
committed corpus as regression tests.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

TMP = tempfile.mkdtemp(prefix="qe-fuzz-")


def fuzz_config(data: bytes) -> None:
    from qwen_edge.errors import QwenEdgeError
    from qwen_edge.formats.config import ModelConfig

    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return
    try:
        cfg = ModelConfig.from_hf(doc)
    except QwenEdgeError:
        return
    cfg.text_tensor_shapes()
    ModelConfig.from_dict(cfg.to_dict())


def fuzz_model_file(data: bytes) -> None:
    from qwen_edge.errors import QwenEdgeError
    from qwen_edge.formats.model_file import ModelFile

    path = os.path.join(TMP, "m.qe")
    with open(path, "wb") as f:
        f.write(data)
    try:
        with ModelFile(path, verify=True) as mf:
            for name in mf.tensors:
                mf.dequantize(name)
    except QwenEdgeError:
        return


def fuzz_request(data: bytes) -> None:
    from qwen_edge.serving.openai_api import APIError, parse_chat, parse_completion, parse_json

    try:
        body = parse_json(data)
        (parse_chat if "messages" in body else parse_completion)(body, 4096)
    except APIError as e:
        assert 400 <= e.status < 500, e.status


def fuzz_chat(data: bytes) -> None:
    from qwen_edge.errors import QwenEdgeError
    from qwen_edge.generation.chat_output import parse_tool_calls
    from qwen_edge.generation.chat_template import validate_messages

    text = data.decode("utf-8", errors="replace")
    content, calls = parse_tool_calls(text)
    assert isinstance(content, str) and isinstance(calls, list)
    try:
        messages = json.loads(text)
    except (ValueError, RecursionError):
        return
    try:
        validate_messages(messages)
    except QwenEdgeError:
        return


def fuzz_tokenizer(data: bytes) -> None:
    from qwen_edge.errors import QwenEdgeError
    from qwen_edge.generation.tokenizer import Tokenizer

    cut = data.find(b"\0")
    spec, text = (data, b"") if cut < 0 else (data[:cut], data[cut + 1 :])
    try:
        tok = Tokenizer.from_json(spec, backend="python")
    except QwenEdgeError:
        return
    ids = tok.encode(text.decode("utf-8", errors="replace"))
    tok.decode(ids)
    tok.decode([b % 300 for b in text[:32]])


TARGETS: dict[str, Callable[[bytes], None]] = {
    "config": fuzz_config,
    "model_file": fuzz_model_file,
    "request": fuzz_request,
    "chat": fuzz_chat,
    "tokenizer": fuzz_tokenizer,
}


def run_one(target: str, data: bytes) -> Any:
    """Runs one input through a target (what the regression test replays)."""
    return TARGETS[target](data)


def write_seeds(out: str) -> None:
    """Writes a few valid inputs per target into out/<target>/ (a starting corpus; the native
    fuzzers take the model-file and config seeds too)."""
    from pathlib import Path

    from qwen_edge.export import presets
    from qwen_edge.export.convert import export
    from qwen_edge.export.random_checkpoint import write_random_checkpoint
    from qwen_edge.formats.config import ModelConfig

    root = Path(out)
    for t in TARGETS:
        (root / t).mkdir(parents=True, exist_ok=True)
    small = {
        "vocab_size": 16, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 2,
        "full_attention_interval": 2, "layer_types": None, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 8, "linear_num_key_heads": 1,
        "linear_num_value_heads": 1, "linear_key_head_dim": 4, "linear_value_head_dim": 4,
    }  # fmt: skip
    hf = presets.hf_config("tiny", **small)
    hf["text_config"].pop("layer_types", None)
    (root / "config" / "wrapper.json").write_text(json.dumps(hf))
    (root / "config" / "text.json").write_text(json.dumps(presets.text_only_config(hf)))
    native = {"config": ModelConfig.from_hf(hf).to_dict()}  # the model file header's form
    (root / "config" / "header.json").write_text(json.dumps(native))
    ckpt = write_random_checkpoint(Path(TMP) / "ckpt", hf)
    export(ckpt, root / "model_file" / "small.qe", "f32")
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "temperature": 0.5, "stream": True, "stream_options": {"include_usage": True},
            "tools": [{"type": "function", "function": {"name": "f"}}]}  # fmt: skip
    (root / "request" / "chat.json").write_text(json.dumps(chat))
    (root / "request" / "completion.json").write_text(
        json.dumps({"prompt": [1, 2, 3], "logprobs": 2, "stop": ["x"], "seed": 1})
    )
    (root / "chat" / "tool_call.txt").write_text(
        '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call> done'
    )
    (root / "chat" / "messages.json").write_text(json.dumps(chat["messages"]))
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}
    tok = {"model": {"type": "BPE", "vocab": {**vocab, "ab": 27}, "merges": ["a b"]},
           "added_tokens": [{"id": 28, "content": "<|im_end|>", "special": True}],
           "pre_tokenizer": None, "normalizer": None}  # fmt: skip
    (root / "tokenizer" / "bpe.bin").write_bytes(json.dumps(tok).encode() + b"\0abc ab<|im_end|>")


def _instrument_package(atheris: Any) -> None:
    """Coverage for every function of qwen_edge, and nothing else. (instrument_imports misses
    an editable install, whose modules come through a custom loader; instrument_all takes
    minutes on a busy machine.)"""
    import inspect

    done: set[int] = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("qwen_edge") or module is None:
            continue
        for obj in list(vars(module).values()):
            members = list(vars(obj).values()) if inspect.isclass(obj) else [obj]
            for m in members:
                fn = getattr(m, "__func__", getattr(m, "fget", m))
                if (
                    inspect.isfunction(fn)
                    and (fn.__module__ or "").startswith("qwen_edge")
                    and id(fn) not in done
                ):
                    done.add(id(fn))
                    atheris.instrument_func(fn)


def main() -> None:
    if sys.argv[1] == "seeds":
        write_seeds(sys.argv[2])
        return
    import atheris

    target = sys.argv[1]
    fn = TARGETS[target]
    import qwen_edge.formats.model_file
    import qwen_edge.generation.chat_output
    import qwen_edge.generation.chat_template
    import qwen_edge.generation.tokenizer
    import qwen_edge.serving.openai_api  # noqa: F401

    _instrument_package(atheris)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
