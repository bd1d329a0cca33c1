"""onnxruntime-genai's config for an exported graph: its names are the graph's, and the thread
count is written only when asked for."""

from __future__ import annotations

import json
from pathlib import Path

from qwen_edge.export import onnx_genai
from qwen_edge.formats.checkpoint import Checkpoint


def test_config_names_the_graphs_inputs_and_threads(tiny_checkpoint: Path) -> None:
    config = Checkpoint(tiny_checkpoint).config
    header = {"special_tokens": {"eos": [7], "pad": 3}, "generation": {"top_k": 20}}
    cfg = onnx_genai.genai_config(config, header, "model.onnx", threads=2)
    decoder = cfg["model"]["decoder"]
    assert cfg["model"]["type"] == "qwen3_5_text" and decoder["filename"] == "model.onnx"
    assert decoder["session_options"]["intra_op_num_threads"] == 2
    assert decoder["inputs"]["past_recurrent_names"] == "past.%d.recurrent"
    assert decoder["outputs"]["present_key_names"] == "present.%d.key"
    assert cfg["model"]["eos_token_id"] == [7] and cfg["model"]["pad_token_id"] == 3
    assert cfg["search"]["top_k"] == 20
    default = onnx_genai.genai_config(config, header, "model.onnx")
    assert "intra_op_num_threads" not in default["model"]["decoder"]["session_options"]


def test_files_are_written_beside_the_graph(tiny_checkpoint: Path, tmp_path: Path) -> None:
    config = Checkpoint(tiny_checkpoint).config
    header = {"special_tokens": {"eos_token": "<e>"}, "chat_template": "{{ x }}"}
    onnx_genai.write_genai_files(config, header, tmp_path / "m.onnx", threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chat_template.jinja", "genai_config.json", "tokenizer_config.json",
    ]  # fmt: skip
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == "<e>"
    assert (tmp_path / "chat_template.jinja").read_text() == "{{ x }}"
