"""`qwen-edge bench`: the JSON record's schema on a tiny model (never its timings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import packing

from qwen_edge.cli import main
from qwen_edge.evaluation import bench
from qwen_edge.export import presets
from qwen_edge.export.random_checkpoint import random_tensor
from qwen_edge.formats.config import ModelConfig


def tiny_model_file(path: Path) -> Path:
    config = ModelConfig.from_hf(presets.hf_config("tiny", vocab_size=512, eos_token_id=0))
    tensors = {}
    for name, shape in config.text_tensor_shapes().items():
        w = random_tensor(name, shape, 0)
        if w.ndim == 2 and shape[1] % 32 == 0:
            tensors[name] = ("q4g32", shape, packing.quantize("q4g32", w)[0])
        else:
            tensors[name] = ("f32", shape, np.ascontiguousarray(w))
    return packing.write_model_file(path, config, tensors)


def test_record_schema(tmp_path: Path) -> None:
    path = tiny_model_file(tmp_path / "tiny.qe")
    cfg = bench.BenchConfig(
        threads=(1, 2), prompt=8, decode=4, decode_prompt=2, repetitions=2, warmup=0,
        measure_bandwidth=False,
    )  # fmt: skip
    record = bench.run(path, cfg)
    assert record["schema"] == bench.SCHEMA and record["engine"] == "qwen-edge"
    assert record["model"]["file_bytes"] == path.stat().st_size
    assert len(record["model"]["sha256"]) == 64
    assert record["peak_rss_bytes"] > 0
    assert [r["threads"] for r in record["runs"]] == [1, 2]
    for r in record["runs"]:
        assert r["isa"]
        for key in ("load_s", "prefill_tok_s", "ttft_s", "decode_tok_s", "decode_bandwidth_gbs"):
            assert len(r[key]) == 2 and all(v > 0 for v in r[key])
            assert r[key + "_mean"] > 0 and r[key + "_std"] >= 0
        assert r["decode_bytes_per_token"] > 0 and r["state_bytes"] > 0
    json.dumps(record)  # serializable
    assert "decode tok/s" in bench.format_table(record)


def test_cli_writes_json(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tiny_model_file(tmp_path / "tiny.qe")
    out = tmp_path / "bench.json"
    argv = [
        "bench", str(path), "--threads", "1", "--prompt", "4", "--decode", "2",
        "--repetitions", "1", "--warmup", "0", "--no-bandwidth", "--json", str(out),
        "--kv-cache", "q8",
    ]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["runs"][0]["threads"] == 1 and record["config"]["kv_cache"] == "q8"
    assert "decode tok/s" in capsys.readouterr().out


def test_kv_cache_type_and_the_bytes_a_step_reads_at_depth(tmp_path: Path) -> None:
    # A decode step reads the weights and every earlier position's K and V: the record's bytes
    # per token (and so its GB/s) count the cache at the phase's mean depth, in its type.
    from qwen_edge.backends import native

    path = tiny_model_file(tmp_path / "tiny.qe")
    common = {"threads": (1,), "prompt": 8, "decode": 4, "repetitions": 1, "warmup": 0,
              "measure_bandwidth": False}  # fmt: skip
    runs = {
        kv: bench.run(path, bench.BenchConfig(decode_prompt=600, kv_cache=kv, **common))
        for kv in ("f16", "q8")
    }
    assert runs["q8"]["config"]["kv_cache"] == "q8"
    for kv, record in runs.items():
        model = native.load(path, threads=1, kv_cache=kv)
        per_position = bench.kv_bytes_per_position(model)
        assert per_position > 0
        run = record["runs"][0]
        assert run["decode_bytes_per_token"] == int(model.decode_weight_bytes + per_position * 602)
    f16, q8 = (runs[kv]["runs"][0] for kv in ("f16", "q8"))
    assert q8["state_bytes"] < f16["state_bytes"]
    assert q8["decode_bytes_per_token"] < f16["decode_bytes_per_token"]


def test_the_deep_prompt_reports_its_progress(tmp_path: Path) -> None:
    # `--decode-prompt 65536` prefills for minutes on a board: each repetition (warm-up too)
    # says its prefill starts, then counts its chunks up to the total; nothing else reports.
    path = tiny_model_file(tmp_path / "tiny.qe")
    cfg = bench.BenchConfig(threads=(1,), prompt=8, decode=2, decode_prompt=1100,
                            repetitions=1, warmup=1, measure_bandwidth=False)  # fmt: skip
    calls: list[tuple[int, int]] = []
    bench.run(path, cfg, progress=lambda *a: calls.append(a))
    one = [(0, 1100), (512, 1100), (1024, 1100), (1100, 1100)]
    assert calls == one * 2


def test_read_bandwidth_is_positive() -> None:
    assert bench.read_bandwidth_gbs(2, size_bytes=8 << 20, repetitions=1) > 0
