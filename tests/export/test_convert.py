"""Export: recipe planning and overrides, every recipe on the tiny checkpoint (files load, verify,
and hold exactly the quantizer's bytes), side files, MTP, atomicity, the CLI and `eval`."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qwen_edge.backends.native import core
from qwen_edge.cli import main
from qwen_edge.errors import ConfigError
from qwen_edge.export import convert, presets
from qwen_edge.export.random_checkpoint import write_random_checkpoint
from qwen_edge.formats import quant
from qwen_edge.formats.checkpoint import Checkpoint
from qwen_edge.formats.config import ModelConfig
from qwen_edge.formats.model_file import ModelFile

GOLDENS = Path(__file__).parent.parent / "data" / "goldens"
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
)
TOKENIZER = {
    "version": "1.0",
    "added_tokens": [
        {"id": 248044, "content": "<|endoftext|>", "special": True},
        {"id": 248046, "content": "<|im_end|>", "special": True},
    ],
    "model": {"type": "BPE", "vocab": {}, "merges": []},
}


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset with a 512-token vocabulary and the side files a hub folder has."""
    extra = {
        "tokenizer.json": TOKENIZER,
        "tokenizer_config.json": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "chat_template.jinja": TEMPLATE,
        "generation_config.json": {
            "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
            "eos_token_id": [248046, 248044], "transformers_version": "5.0",
        },
    }  # fmt: skip
    hf = presets.hf_config("tiny", vocab_size=512)
    return write_random_checkpoint(tmp_path_factory.mktemp("ck"), hf, extra_files=extra)


def test_plan_q4_recipe() -> None:
    """Without the budget q4 is q4k matrices, a q6k embedding and q8g32 gate projections."""
    ckpt = Checkpoint(GOLDENS / "tied-gqa4")
    shapes = ckpt.config.text_tensor_shapes()
    base = replace(convert.RECIPES["q4"], budget=None)
    formats = convert.plan_formats(shapes, base)
    for name, fmt in formats.items():
        if len(shapes[name]) != 2:
            assert fmt == "f32", name
        elif name.endswith(convert.SMALL_PROJ):
            assert fmt == "q8g32", name
        else:
            assert fmt == convert.RECIPES["q4"].matrix or name == "embed_tokens.weight"
    assert formats["embed_tokens.weight"] == convert.RECIPES["q4"].embedding == "q6k"
    budgeted = convert.plan_formats(shapes, "q4")
    assert all(budgeted[n] in (f, "q6k") for n, f in formats.items())


def _tensor_bytes(shapes: dict[str, tuple[int, ...]], formats: dict[str, str]) -> int:
    return sum(quant.tensor_nbytes(formats[n], s) for n, s in shapes.items())


# llama.cpp 0.3.36's tensor bytes for the trained checkpoint (docs/quality.md), and for the
# random 0.8B and 2B checkpoints (their GGUF files' tensor data).
LLAMA_BYTES = {"Q4_0": 56_599_008, "Q4_K_M": 56_936_928}


@pytest.mark.parametrize("preset", ["tiny", "0.8b", "2b"])
def test_budget_recipes_stay_within_llama_cpp_bytes(preset: str) -> None:
    """q4 and q4m spend up to llama.cpp Q4_0's / Q4_K_M's tensor bytes on 6-bit layer matrices,
    in PROMOTIONS order (a kind's "more bits" layers first), and never more."""
    shapes = ModelConfig.from_hf(presets.hf_config(preset)).text_tensor_shapes()
    for recipe, ftype in (("q4", "Q4_0"), ("q4m", "Q4_K_M")):
        formats = convert.plan_formats(shapes, recipe)
        base = convert.plan_formats(shapes, replace(convert.RECIPES[recipe], budget=None))
        limit = convert.llama_tensor_bytes(shapes, ftype)
        used = _tensor_bytes(shapes, formats)
        if preset == "tiny":  # 64 columns: q4k's row factors already pass llama.cpp's bytes
            assert used == _tensor_bytes(shapes, base) > limit
            continue
        assert _tensor_bytes(shapes, base) < used <= limit
        promoted = [n for n in shapes if formats[n] != base[n]]
        assert all(formats[n] == "q6k" and n.startswith("layers.") for n in promoted)
        # nothing left out would still fit (greedy fill)
        for n in shapes:
            if formats[n] == "q4k":
                extra = quant.tensor_nbytes("q6k", shapes[n]) - quant.tensor_nbytes(
                    "q4k", shapes[n]
                )
                assert used + extra > limit, n
        # the first kind (down_proj) first, from its first "more bits" layer
        if promoted:
            assert formats["layers.0.mlp.down_proj.weight"] == "q6k"
    assert convert.llama_tensor_bytes(shapes, "Q4_K_M") > convert.llama_tensor_bytes(shapes, "Q4_0")


def test_llama_tensor_bytes_match_its_files() -> None:
    """The budget formula against the bytes of llama.cpp's files for the trained checkpoint's
    shapes (hidden 256, MLP 768, 8 layers, tied 248,320-row embedding)."""
    hf = presets.hf_config(
        "tiny", hidden_size=256, intermediate_size=768, num_hidden_layers=8, head_dim=256,
        num_attention_heads=2, num_key_value_heads=1, linear_key_head_dim=128,
        linear_value_head_dim=128, linear_num_value_heads=2,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 2,
    )  # fmt: skip
    shapes = ModelConfig.from_hf(hf).text_tensor_shapes()
    for ftype, want in LLAMA_BYTES.items():
        assert convert.llama_tensor_bytes(shapes, ftype) == want, ftype
    with pytest.raises(ConfigError, match="budget"):
        convert.llama_tensor_bytes(shapes, "Q2_K")


def test_plan_q4m_recipe() -> None:
    shapes = Checkpoint(GOLDENS / "tied-gqa4").config.text_tensor_shapes()
    q4, q4m = convert.plan_formats(shapes, "q4"), convert.plan_formats(shapes, "q4m")
    assert all(f == q4[n] or f == "q6k" for n, f in q4m.items())  # q4 with more 6-bit matrices
    assert _tensor_bytes(shapes, q4m) >= _tensor_bytes(shapes, q4)
    # --override comes after the budget
    ov = convert.plan_formats(shapes, "q4m", {"layers.*": "q4k"})
    assert {n for n, f in ov.items() if f == "q6k"} == {"embed_tokens.weight"}


def test_plan_falls_back_when_k_is_not_a_multiple_of_32() -> None:
    ckpt = Checkpoint(GOLDENS / "r3-dk-ne-dv-f32")  # hidden 24
    shapes = ckpt.config.text_tensor_shapes()
    dtypes = {n: ckpt.info(n).dtype for n in shapes}
    formats = convert.plan_formats(shapes, "q8", source_dtypes=dtypes)
    up = "layers.0.mlp.up_proj.weight"  # [48, 24]
    assert formats[up] == "f16"
    packable = [n for n, s in shapes.items() if quant.can_pack(s)]
    assert packable and all(formats[n] == "q8g32" for n in packable)
    assert all(formats[n] == "f16" for n, s in shapes.items() if len(s) == 2 and n not in packable)
    bf16 = convert.plan_formats(shapes, "q8", source_dtypes=dict.fromkeys(shapes, "BF16"))
    assert bf16[up] == "bf16"


def test_overrides() -> None:
    shapes = Checkpoint(GOLDENS / "tied-gqa4").config.text_tensor_shapes()
    ov = convert.parse_overrides(
        ["layers.*.mlp.down_proj.weight=q8g32", "layers.0.*=q4ag32", "norm.weight=f16"]
    )
    formats = convert.plan_formats(shapes, "q4", ov)
    assert formats["layers.1.mlp.down_proj.weight"] == "q8g32"
    assert formats["layers.0.mlp.down_proj.weight"] == "q4ag32"  # the last match wins
    assert formats["norm.weight"] == "f16"
    assert formats["layers.0.input_layernorm.weight"] == "f32"  # packed globs skip vectors
    with pytest.raises(ConfigError, match="matches no tensor"):
        convert.plan_formats(shapes, "q4", {"nope.*": "q8g32"})
    with pytest.raises(ConfigError, match="can be stored in q4k"):
        convert.plan_formats(shapes, "q4", {"*norm.weight": "q4k"})
    for bad in ("layers.*", "=q4k", "x=q5"):
        with pytest.raises(ConfigError, match="--override"):
            convert.parse_overrides([bad])
    with pytest.raises(ConfigError, match="unknown recipe"):
        convert.plan_formats(shapes, "q3")


@pytest.mark.parametrize("recipe", list(convert.RECIPES))
def test_export_every_recipe(recipe: str, small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / f"{recipe}.qe"
    summary = convert.export(small_checkpoint, out, recipe)
    assert out.stat().st_size == summary.file_bytes
    ckpt = Checkpoint(small_checkpoint)
    with ModelFile(out, verify=True) as mf:
        assert mf.config == ckpt.config
        assert mf.header["quant"]["recipe"] == recipe
        assert mf.header["quant"]["bits_per_weight"] == pytest.approx(summary.bits_per_weight, 1e-3)
        assert not any(n.startswith("mtp.") for n in mf.tensors)
        for name, e in mf.tensors.items():
            w = ckpt.read(name)
            # Every stored tensor holds exactly the quantizer's bytes for the checkpoint values.
            assert np.array_equal(mf.raw(name), quant.quantize(e.format, w)), name
            if e.format in ("f32", "bf16"):  # the checkpoint stores bf16 (and f32): lossless
                assert np.array_equal(mf.dequantize(name), w), name
            if quant.is_packed(e.format):
                rows, k = e.shape
                native = core().dequantize(e.format, mf.raw(name), rows, k)
                assert np.array_equal(native.view(np.uint32), mf.dequantize(name).view(np.uint32))
    bpw = {"f32": 32, "bf16": 16, "f16": 16, "q8": 8.5, "q4": 4.5, "q4m": 4.5, "q4s": 4.5}[recipe]
    assert bpw <= summary.bits_per_weight < bpw * 1.3 + 1


def test_side_files_and_mtp(small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.qe"
    summary = convert.export(small_checkpoint, out, "q8", keep_mtp=True)
    assert summary.mtp
    with ModelFile(out, verify=True) as mf:
        h = mf.header
        assert h["chat_template"] == TEMPLATE
        assert h["generation"] == {
            "do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95,
            "eos_token_id": [248046, 248044],
        }  # fmt: skip
        assert h["special_tokens"]["eos"] == [248044, 248046]
        assert h["special_tokens"]["pad"] == 248044
        assert json.loads(mf.blob("tokenizer.json")) == TOKENIZER
        assert "generation_config.json" in mf.blobs
        mtp = [n for n in mf.tensors if n.startswith("mtp.")]
        assert len(mtp) == len(Checkpoint(small_checkpoint).groups.mtp)
        assert mf.tensors["mtp.fc.weight"].format == "q8g32"


def test_export_goldens_with_fallbacks(tmp_path: Path) -> None:
    for name in ("r3-dk-ne-dv-f32", "untied-r2-fullfirst", "eight-layers-f16"):
        out = tmp_path / f"{name}.qe"
        convert.export(GOLDENS / name, out, "q4")
        with ModelFile(out, verify=True) as mf:
            assert {e.format for e in mf.tensors.values()} <= {"f32", "f16", "q4k", "q6k", "q8g32"}


def test_interrupted_export_leaves_nothing(small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.qe"

    def interrupt(name: str, i: int, n: int) -> None:
        if i == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert.export(small_checkpoint, out, "q4", progress=interrupt)
    assert list(tmp_path.iterdir()) == []


# --- CLI ------------------------------------------------------------------------------------------
def test_cli_export_and_eval(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small_checkpoint = tiny_checkpoint  # the real vocabulary: the eval text's ids must fit
    files = {}
    for recipe in ("f32", "q8", "q4"):
        files[recipe] = tmp_path / f"{recipe}.qe"
        argv = ["export", str(small_checkpoint), "-o", str(files[recipe]), "--quant", recipe]
        if recipe == "q8":
            assert main(argv) == 0
            text = capsys.readouterr().out
            assert "bits/weight" in text and "q8g32" in text
            continue
        assert main([*argv, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["recipe"] == recipe and summary["file_bytes"] > 0

    reports = {}
    for recipe, path in files.items():
        argv = ["eval", str(path), "--reference", str(small_checkpoint)]
        assert main([*argv, "--tokens", "48", "--ctx", "24", "--json"]) == 0
        reports[recipe] = json.loads(capsys.readouterr().out)
    exact = reports["f32"]
    assert exact["tokens"] == 46 and exact["top1"] == 1.0
    # Same weights: only the float32 rounding of the cached reference log-probs remains.
    assert exact["mean_kl"] < 1e-6 and exact["ppl_ratio"] == pytest.approx(1, abs=1e-5)
    # Random weights make this tiny model chaotic (KL of a few tenths to nats); only the order
    # is meaningful here. docs/quality.md has the real-shape measurements.
    assert 0 < reports["q8"]["mean_kl"] < reports["q4"]["mean_kl"]
    assert reports["q8"]["top1"] > reports["q4"]["top1"] - 0.2

    argv = ["eval", str(files["q8"]), "--reference", str(small_checkpoint)]
    assert main([*argv, "--tokens", "48", "--ctx", "24", "--act-q8", "--json"]) == 0
    with_act = json.loads(capsys.readouterr().out)  # activations rounded too: another result
    assert with_act["mean_kl"] != reports["q8"]["mean_kl"] and np.isfinite(with_act["mean_kl"])
    assert main([*argv, "--tokens", "24"]) == 0
    assert "mean KL" in capsys.readouterr().out


def test_cli_eval_text(
    tiny_checkpoint: Path,
    qwen35_tokenizer_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`eval --text`: a token file and a plain text (tokenized with the checkpoint's tokenizer)
    give the same report as the shipped ids they hold."""
    from qwen_edge.evaluation import quality

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    shutil.copy(qwen35_tokenizer_dir / "tokenizer.json", ckpt / "tokenizer.json")
    model = tmp_path / "q8.qe"
    convert.export(ckpt, model, "q8")
    base = ["eval", str(model), "--reference", str(ckpt), "--ctx", "24", "--json"]

    def report(*extra: str) -> dict:
        assert main([*base, *extra]) == 0, capsys.readouterr().err
        doc = json.loads(capsys.readouterr().out)
        return {k: doc[k] for k in ("tokens", "mean_kl", "p99_kl", "top1", "ppl_ratio")}

    shipped = report("--tokens", "48")
    ids = quality.eval_tokens()
    tokens = tmp_path / "held.tokens.json"
    tokens.write_text(json.dumps({"source": "test", "ids": ids[:48]}))
    assert report("--text", str(tokens)) == shipped
    # The shipped text's first lines, re-tokenized: the same ids, so the same report.
    lines = quality.EVAL_TOKENS.with_name("eval_coriolanus.txt").read_text().splitlines(True)
    text = tmp_path / "excerpt.txt"
    text.write_text("".join(lines[:40]))
    assert quality.eval_tokens(48, text, ckpt / "tokenizer.json") == ids[:48]
    assert report("--text", str(text), "--tokens", "48") == shipped
    other = report("--text", str(tokens), "--tokens", "30")
    assert other["tokens"] == 23 and other != shipped  # one window of 24

    (ckpt / "tokenizer.json").unlink()  # a text needs the checkpoint's tokenizer
    assert main([*base, "--text", str(text)]) == 1
    assert "tokenizer.json" in capsys.readouterr().err
    for bad in ({"ids": []}, {"ids": [1, -2]}, {"text": "x"}, [1, 2]):
        tokens.write_text(json.dumps(bad))
        assert main([*base, "--text", str(tokens)]) == 1
        assert "'ids' list" in capsys.readouterr().err
    tokens.write_text("{not json")
    assert main([*base, "--text", str(tokens)]) == 1
    assert "not a JSON token file" in capsys.readouterr().err


def test_cli_errors(small_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "m.qe")
    assert main(["export", str(small_checkpoint), "-o", out, "--override", "nope=q4k"]) == 1
    assert "--override" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "-o", out]) == 1
    assert "does not exist" in capsys.readouterr().err
    other = write_random_checkpoint(tmp_path / "other", presets.hf_config("tiny", vocab_size=256))
    convert.export(small_checkpoint, out, "q8")
    assert main(["eval", out, "--reference", str(other)]) == 1
    assert "different model configurations" in capsys.readouterr().err
    assert main(["eval", out, "--reference", str(small_checkpoint)]) == 1
    assert "eval needs a model with the Qwen3.5 vocabulary" in capsys.readouterr().err
    bad = tmp_path / "bad.qe"
    bad.write_bytes(b"not a model file" * 8)
    assert main(["eval", str(bad), "--reference", str(small_checkpoint)]) == 1
    assert "magic" in capsys.readouterr().err


def test_q8a_inputs_wrapper() -> None:
    from qwen_edge.evaluation.quality import _Q8aInputs

    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 64)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    got = x @ _Q8aInputs(w).T
    assert np.array_equal(got, quant.fake_quantize_q8a(x) @ w.T)
    assert not np.array_equal(got, x @ w.T)


def test_export_with_calibration(small_checkpoint: Path, tmp_path: Path) -> None:
    """`--calibration`: the packed 4/6-bit tensors the file names are the importance-weighted
    quantizer's bytes (native and python exports equal), the others as without it; the header
    records the calibration's description; bad files are clear errors."""
    ckpt = Checkpoint(small_checkpoint)
    shapes = ckpt.config.text_tensor_shapes()
    rng = np.random.default_rng(4)
    named = [n for n in shapes if n.endswith(("down_proj.weight", "in_proj_qkv.weight"))]
    named.append("embed_tokens.weight")
    imp = {n: np.exp(rng.standard_normal(shapes[n][1])).astype(np.float32) for n in named}
    calib = tmp_path / "calib.npz"
    with open(calib, "wb") as f:
        np.savez(f, __meta__=np.array(json.dumps({"tokens": 7})), **imp)
    plain = tmp_path / "plain.qe"
    convert.export(small_checkpoint, plain, "q4m")
    outs = []
    for quantizer in ("python", "native"):
        out = tmp_path / f"cal-{quantizer}.qe"
        main(["export", str(small_checkpoint), "-o", str(out), "--quant", "q4m",
              "--calibration", str(calib), "--quantizer", quantizer])  # fmt: skip
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    read = convert.read_calibration(calib)
    with ModelFile(tmp_path / "cal-native.qe") as mf, ModelFile(plain) as mp:
        assert mf.header["quant"]["calibration"] == {"tokens": 7}
        assert "calibration" not in mp.header["quant"]
        for name, e in mf.tensors.items():
            w = ckpt.read(name)
            if name in imp and quant.is_packed(e.format):
                want = quant.quantize(e.format, w, importance=read.get(name))
                assert not np.array_equal(mf.raw(name), mp.raw(name)), name
            else:
                want = mp.raw(name)
            assert np.array_equal(mf.raw(name), want), name

    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as f:
        np.savez(f, **{named[0]: np.zeros(shapes[named[0]][1], np.float32)})
    with pytest.raises(ConfigError, match="positive"):
        convert.export(small_checkpoint, tmp_path / "x.qe", "q4", calibration=bad)
    with open(bad, "wb") as f:
        np.savez(f, **{named[0]: np.ones(3, np.float32)})
    with pytest.raises(ConfigError, match="channels"):
        convert.export(small_checkpoint, tmp_path / "x.qe", "q4", calibration=bad)
    with pytest.raises(ConfigError, match="cannot read"):
        convert.export(small_checkpoint, tmp_path / "x.qe", "q4", calibration=tmp_path / "no")
    assert not (tmp_path / "x.qe").exists()
