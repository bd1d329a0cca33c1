# SPDX-License-Identifier: Apache-2.0
"""Smoke test of `tools/train_small.py`: a tiny Qwen3.5 (with MTP head) trained for a few dozen
steps on the shipped Coriolanus excerpt learns, and the checkpoint it writes is the trained
model: transformers loads it with the same logits, and qwen-edge exports and runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tool_scripts import load_tool

torch = pytest.importorskip("torch", reason="needs torch (the reference extra)")
transformers = pytest.importorskip("transformers", reason="needs transformers")
pytest.importorskip("tokenizers", reason="needs tokenizers")
pytest.importorskip("safetensors", reason="needs safetensors")

# Trains for about a minute on two cores.
pytestmark = pytest.mark.slow


REPO = Path(__file__).resolve().parents[2]
TEXT = REPO / "qwen_edge" / "evaluation" / "data" / "eval_coriolanus.txt"


def _tool():  # type: ignore[no-untyped-def]
    return load_tool("train_small")


@pytest.fixture(scope="module")
def trained(qwen35_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tool = _tool()
    out = tmp_path_factory.mktemp("train") / "ckpt"
    args = tool.parse_args(
        ["--config", "tiny", "--steps", "30", "--batch", "4", "--text", str(TEXT),
         "--heldout", "0.15", "--tokenizer", str(qwen35_tokenizer_dir),
         "--eval-every", "0.5", "--threads", "2", "-o", str(out)]
    )  # fmt: skip
    torch.manual_seed(0)
    return tool, out, tool.train(args)


def _ids(result, n: int = 48) -> np.ndarray:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    return rng.integers(0, len(result.used_ids), n)


def _compact_logits(result, compact: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    lm = result.lm
    with torch.no_grad():
        h = lm.model(input_ids=torch.from_numpy(compact)[None]).last_hidden_state
        return (h @ lm.model.embed_tokens.weight.T)[0, :, :-1].numpy()


def test_loss_falls(trained) -> None:  # type: ignore[no-untyped-def]
    _, out, result = trained
    log = json.loads((out / "train_log.json").read_text())
    curve = log["curve"]
    assert np.mean([p["loss"] for p in curve[-5:]]) < curve[0]["loss"] - 1.0
    assert np.mean([p["mtp_loss"] for p in curve[-5:]]) < curve[0]["mtp_loss"] - 1.0
    assert log["heldout_curve"][-1]["loss"] < log["heldout_curve"][0]["loss"]
    assert log["heldout_loss"] == pytest.approx(result.log["heldout_loss"])


def test_checkpoint_layout(trained) -> None:  # type: ignore[no-untyped-def]
    _, out, result = trained
    from safetensors import safe_open

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3_5ForConditionalGeneration"]
    assert config["text_config"]["vocab_size"] == 248320
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "generation_config.json", "train_log.json"):  # fmt: skip
        assert (out / name).is_file(), name
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        dtypes = {n: str(f.get_slice(n).get_dtype()) for n in names}
        assert f.get_tensor("model.language_model.embed_tokens.weight").shape == (248320, 64)
        # The MTP head as trained, under the hub's names.
        for name, value in result.mtp.state_dict().items():
            stored = f.get_tensor("mtp." + name).float()
            torch.testing.assert_close(stored, value.float(), rtol=0, atol=0)
    mtp = {n for n in names if n.startswith("mtp.")}
    assert len(mtp) == 15 and "mtp.fc.weight" in mtp
    assert any(n.startswith("model.visual.") for n in names)
    for name, dtype in dtypes.items():
        fp32 = name.endswith(("linear_attn.A_log", "linear_attn.norm.weight"))
        assert dtype == ("F32" if fp32 else "BF16"), name


def test_heldout_token_file(trained, qwen35_tokenizer_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The held-out split is written as a token file next to the checkpoint, and
    `--write-heldout` writes the same file without training."""
    tool, out, result = trained
    doc = json.loads((out / tool.HELDOUT_FILE).read_text())
    held = tool.encode_docs(out, tool.split_heldout([TEXT.read_text(encoding="utf-8")], 0.15)[1])
    assert doc["ids"] == held.tolist() and doc["ids"][-1] == tool.EOS_ID
    assert len(held) == result.log["corpus"]["heldout_tokens"]
    again = tmp_path / "held.json"
    argv = ["--write-heldout", str(again), "--text", str(TEXT), "--heldout", "0.15",
            "--tokenizer", str(qwen35_tokenizer_dir)]  # fmt: skip
    assert tool.main(argv) == 0
    assert json.loads(again.read_text()) == doc
    from qwen_edge.evaluation.quality import eval_tokens

    assert eval_tokens(text=out / tool.HELDOUT_FILE) == doc["ids"]


def test_transformers_logits_match(trained) -> None:  # type: ignore[no-untyped-def]
    _, out, result = trained
    compact = _ids(result)
    expected = _compact_logits(result, compact)
    for cls in (transformers.Qwen3_5ForConditionalGeneration, transformers.AutoModelForCausalLM):
        model = cls.from_pretrained(out, dtype=torch.float32).eval()
        with torch.no_grad():
            full = model(input_ids=torch.from_numpy(result.used_ids[compact])[None]).logits[0]
        got = full[:, torch.from_numpy(result.used_ids)].numpy()
        span = expected.max() - expected.min()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * span)


def test_unused_ids_are_negligible(trained) -> None:  # type: ignore[no-untyped-def]
    """The full-vocabulary held-out loss through transformers is the tool's (corpus ids +
    the shared row for the rest), not worse."""
    tool, out, result = trained
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    held = tool.encode_docs(out, tool.split_heldout([TEXT.read_text(encoding="utf-8")], 0.15)[1])
    seq = result.log["config"]["seq_len"]
    n = (len(held) - 1) // seq
    with torch.no_grad():
        rows = torch.from_numpy(np.stack([held[j * seq : (j + 1) * seq + 1] for j in range(n)]))
        logits = model(input_ids=rows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1)
        ).item()
    assert loss <= result.log["heldout_loss"] + 1e-4
    assert loss >= np.log(result.log["heldout_ppl_corpus_ids_only"]) - 1e-4


def test_qwen_edge_runs_it(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import qwen_edge
    from qwen_edge.export.convert import export

    _, out, result = trained
    compact = _ids(result)
    ids = result.used_ids[compact]
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)[None]).logits[0].numpy()
    span = ref.max() - ref.min()
    export(out, tmp_path / "f32.qe", "f32")
    got = qwen_edge.load(tmp_path / "f32.qe", threads=2).logits(ids.tolist())
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * span)
    export(out, tmp_path / "q8.qe", "q8")
    q8 = qwen_edge.load(tmp_path / "q8.qe", threads=2).logits(ids.tolist())
    nmse = float(np.mean((q8 - ref) ** 2) / np.mean(ref**2))
    agree = float(np.mean(q8.argmax(-1) == ref.argmax(-1)))
    assert nmse < 1e-2 and agree >= 0.9, (nmse, agree)


def test_mtp_distill(trained, qwen35_tokenizer_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`--mtp-distill` trains the head alone on the trunk's next-token distribution: from a
    fresh head the KL falls, and the written checkpoint keeps every other tensor bit for bit."""
    from safetensors import safe_open

    tool, out, result = trained
    _, head = tool.build_model(tool.read_shape(out), 16, seed=1)  # untrained: far to go
    fresh = tmp_path / "fresh"
    tool.write_distilled(fresh, out, head, {})
    distilled = tmp_path / "distilled"
    argv = ["--config", "tiny", "--steps", "60", "--batch", "4", "--lr", "3e-3",
            "--text", str(TEXT), "--heldout", "0.15", "--tokenizer", str(qwen35_tokenizer_dir),
            "--mtp-distill", str(fresh), "-o", str(distilled)]  # fmt: skip
    assert tool.main(argv) == 0
    log = json.loads((distilled / "train_log.json").read_text())
    d = log["mtp_distill"]
    assert log["heldout_loss"] == result.log["heldout_loss"]  # the trunk's log, carried over
    assert d["steps"] == 60
    assert np.mean([p["kl"] for p in d["curve"][-3:]]) < 0.5 * d["curve"][0]["kl"]
    assert d["heldout_after"]["kl"] < 0.5 * d["heldout_before"]["kl"]
    assert d["heldout_after"]["trunk_loss"] == d["heldout_before"]["trunk_loss"]
    with (
        safe_open(str(out / "model.safetensors"), "pt") as a,
        safe_open(str(distilled / "model.safetensors"), "pt") as b,
    ):
        names = a.keys()
        assert set(names) == set(b.keys())
        for name in names:
            x, y = a.get_tensor(name), b.get_tensor(name)
            assert x.dtype == y.dtype, name
            if not name.startswith("mtp."):  # bits, not values (bf16 viewed as int16)
                bits = torch.int16 if x.dtype == torch.bfloat16 else torch.int32
                assert torch.equal(x.view(bits), y.view(bits)), name
        assert not torch.equal(a.get_tensor("mtp.fc.weight"), b.get_tensor("mtp.fc.weight"))
    assert (distilled / tool.HELDOUT_FILE).read_bytes() == (out / tool.HELDOUT_FILE).read_bytes()
    _speculation_keeps_the_greedy_text(fresh, distilled, result.used_ids, tmp_path)
    # Another corpus's ids do not fit the checkpoint's embedding: a clear error, not a wrong
    # teacher.
    with pytest.raises(SystemExit, match="differ"):
        tool.load_checkpoint(out, result.used_ids[:-1], 0)


def _speculation_keeps_the_greedy_text(
    fresh: Path, distilled: Path, used_ids: np.ndarray, tmp_path: Path
) -> None:
    """On trained weights, speculation with either head gives plain greedy decoding's tokens,
    and the distilled head's drafts are accepted more often than the untrained head's."""
    from qwen_edge.backends import native
    from qwen_edge.export.convert import export
    from qwen_edge.generation.loop import generate
    from qwen_edge.generation.settings import GenerationConfig

    greedy = GenerationConfig(max_tokens=48, stop_token_ids=()).replace(
        temperature=0.0, presence_penalty=0.0, speculative="off"
    )
    ids = [int(t) for t in used_ids[np.random.default_rng(5).integers(0, len(used_ids), 16)]]
    accepted = {}
    for name, ckpt in (("fresh", fresh), ("distilled", distilled)):
        export(ckpt, tmp_path / f"{name}.qe", "q8", keep_mtp=True)
        m = native.load(tmp_path / f"{name}.qe", threads=2)
        plain = generate(m, None, ids, greedy)
        spec = generate(m, None, ids, greedy.replace(speculative="mtp", draft_tokens=2))
        assert spec.tokens == plain.tokens, name
        s = spec.stats.speculative
        accepted[name] = s["accepted_tokens"] / s["drafted_tokens"]
    assert accepted["distilled"] > accepted["fresh"], accepted


def test_mtp_distill_chained_step() -> None:
    """The chained step's one masked pass is the second draft as speculation makes it: the
    head over the real pairs 0..t, then its own output at t with token t+2 at position t+1."""
    tool = _tool()
    torch.manual_seed(0)
    lm, mtp = tool.build_model(tool.PRESETS["tiny"].shape, 50, 0)
    with torch.no_grad():
        for p in mtp.parameters():
            p += 0.05 * torch.randn_like(p)  # not the init's (1 + 0) norms
    lm.eval()
    mtp.eval()
    ids = torch.randint(0, 50, (2, 13))
    with torch.no_grad():
        got = tool.distill_losses(lm, mtp, ids, 1, chain=True)["kl2"].item()
        x = ids[:, :-1]
        B, T = x.shape
        h = lm.model(input_ids=x).last_hidden_state
        emb = lm.model.embed_tokens(x)
        W = lm.model.embed_tokens.weight
        trunk = torch.log_softmax(h @ W.T, -1)

        def rope(pos):  # type: ignore[no-untyped-def]
            return lm.model.rotary_emb(h, pos.view(1, 1, -1).expand(3, B, -1))

        g = mtp(h[:, : T - 1], emb[:, 1:], rope(torch.arange(T - 1)))
        kls = []
        for t in range(T - 2):
            hid = torch.cat([h[:, : t + 1], g[:, t : t + 1]], 1)
            nxt = torch.cat([emb[:, 1 : t + 2], emb[:, t + 2 : t + 3]], 1)
            g2 = mtp(hid, nxt, rope(torch.arange(t + 2)))[:, -1]
            q = torch.log_softmax(g2 @ W.T, -1)
            kls.append((trunk[:, t + 2].exp() * (trunk[:, t + 2] - q)).sum(-1))
    assert got == pytest.approx(torch.stack(kls).mean().item(), rel=1e-5)
