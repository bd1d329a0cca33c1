"""The `reference` group: the numpy reference against live transformers (torch, fp32).

Fresh checkpoints of every golden variant (a different seed from the goldens) are written by
transformers' `save_pretrained`, loaded back by both sides, and compared on a 70-token prompt
plus 16 cached greedy decode steps, with the measure and tolerance of test_reference.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN_DIRS
from test_reference import LOGIT_TOL, rel_err

from qwen_edge.backends.reference import ReferenceModel
from qwen_edge.formats.checkpoint import Checkpoint

pytestmark = pytest.mark.reference
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import make_checkpoint  # noqa: E402
import make_goldens  # noqa: E402


@pytest.mark.parametrize("variant", list(make_goldens.VARIANTS))
def test_reference_matches_live_transformers(variant: str, tmp_path: Path) -> None:
    _, layout, dtype, _ = make_goldens.VARIANTS[variant]
    hf_config = make_goldens.variant_config(variant)
    model = make_checkpoint.build_model(hf_config, layout, dtype, seed=11)
    model.save_pretrained(tmp_path)
    hf = type(model).from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = np.random.default_rng(12).integers(0, make_goldens.VOCAB, 70)
    want_prompt, tokens, want_decode = make_goldens.transformers_logits(hf, prompt, 16)

    ref = ReferenceModel.from_checkpoint(tmp_path)
    state = ref.new_state()
    assert rel_err(ref.forward(prompt, state, all_logits=True), want_prompt) < LOGIT_TOL
    got_decode = np.stack([ref.step(int(t), state) for t in tokens])
    assert rel_err(got_decode, want_decode) < LOGIT_TOL


def test_goldens_are_reproducible() -> None:
    """The committed goldens still match what this transformers computes from their weights."""
    for golden in GOLDEN_DIRS:
        g = np.load(golden / "golden.npz")
        layout = make_goldens.VARIANTS[golden.name][1]
        cls = (
            transformers.Qwen3_5ForConditionalGeneration
            if layout == "wrapper"
            else transformers.Qwen3_5ForCausalLM
        )
        hf = cls.from_pretrained(golden, dtype=torch.float32).eval()
        prompt_logits, tokens, _ = make_goldens.transformers_logits(hf, g["prompt"], 16)
        assert rel_err(prompt_logits, g["prompt_logits"]) < LOGIT_TOL
        np.testing.assert_array_equal(tokens, g["decode_tokens"])


@pytest.mark.slow
def test_real_size_checkpoint_via_transformers(tmp_path: Path) -> None:
    """The 0.8b preset written by transformers (vision tower included) reads and counts as the
    exact numbers of docs/model.md §2.4 say."""
    out = tmp_path / "0.8b"
    assert make_checkpoint.main(["0.8b", "-o", str(out)]) == 0
    summary = Checkpoint(out).summary()["parameters"]
    assert summary["text_total"] == 752_393_024
    assert summary["vision"] == {"tensors": 153, "parameters": 100_592_896}
    assert summary["mtp"] == {"tensors": 15, "parameters": 20_452_864}
