from __future__ import annotations

import math

import pytest

from qwen_edge.errors import ConfigError
from qwen_edge.export import presets
from qwen_edge.formats.config import FULL, LINEAR, ModelConfig

# docs/model.md §2.4: exact text-model parameter counts and tensor counts of the released models.
SPEC_TEXT_PARAMS = {
    "0.8b": 752_393_024,
    "2b": 1_881_825_088,
    "4b": 4_205_751_296,
    "9b": 8_953_803_264,
}
SPEC_TEXT_TENSORS = {"0.8b": 320, "2b": 320, "4b": 426, "9b": 427}


@pytest.mark.parametrize("name", ["0.8b", "2b", "4b", "9b"])
def test_presets_have_the_released_shapes(name: str) -> None:
    cfg = ModelConfig.from_hf(presets.hf_config(name))
    shapes = cfg.text_tensor_shapes()
    assert sum(math.prod(s) for s in shapes.values()) == SPEC_TEXT_PARAMS[name]
    assert len(shapes) == SPEC_TEXT_TENSORS[name]
    assert cfg.full_layers == list(range(3, cfg.num_hidden_layers, 4))
    assert cfg.rotary_dim == 64


def test_wrapper_and_text_config_give_the_same_model() -> None:
    hf = presets.hf_config("0.8b")
    assert ModelConfig.from_hf(hf) == ModelConfig.from_hf(presets.text_only_config(hf))


def test_layer_types_fall_back_to_the_interval_rule() -> None:
    text = presets.text_config("2b")
    explicit = ModelConfig.from_hf(text)
    del text["layer_types"]
    assert ModelConfig.from_hf(text).layer_types == explicit.layer_types
    assert explicit.layer_types[:4] == (LINEAR, LINEAR, LINEAR, FULL)


def test_round_trip_through_dict() -> None:
    cfg = ModelConfig.from_hf(presets.hf_config("tiny"))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "'llama' model"),
        ({"text_config": None}, "no text_config"),
    ],
)
def test_wrapper_errors(change: dict, message: str) -> None:
    hf = presets.hf_config("tiny")
    hf.update(change)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf(hf)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
        ({"linear_num_value_heads": 3}, "not a multiple of linear_num_key_heads"),
        ({"layer_types": ["linear_attention"] * 3}, "layer_types has 3 entries"),
        ({"layer_types": ["linear_attention"] * 3 + ["sliding_attention"]}, "unknown layer type"),
        ({"hidden_size": 0}, "hidden_size must be an integer in 1"),
        ({"hidden_size": "64"}, "hidden_size must be an integer in 1"),
        ({"hidden_size": 2**40}, "hidden_size must be an integer in 1"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e7}}, "rope_type 'yarn'"),
        ({"rope_parameters": {"rope_theta": 1e7, "partial_rotary_factor": 0.3}}, "rotary dims"),
    ],
)
def test_text_config_errors(change: dict, message: str) -> None:
    text = presets.text_config("tiny", **change)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf(text)


def test_missing_key_is_named() -> None:
    text = presets.text_config("tiny")
    del text["hidden_size"]
    with pytest.raises(ConfigError, match="no 'hidden_size'"):
        ModelConfig.from_hf(text, source="ckpt/config.json")


# Found by fuzzing (tools/fuzz.sh) or by hand as a hostile user: each was a Python exception
# other than ConfigError (TypeError, AttributeError, OverflowError, ZeroDivisionError) or a
# hang building a list of 10**18 layers.
HOSTILE = [
    ({"architectures": True}, "architectures"),
    ({"architectures": [1]}, "architectures"),
    ({"rope_parameters": "yes"}, "rope_parameters must be an object"),
    ({"rope_parameters": {"rope_theta": 1e7, "partial_rotary_factor": 1e308}}, "partial_rotary"),
    ({"rope_parameters": {"rope_theta": 1e7, "partial_rotary_factor": float("inf")}}, "finite"),
    ({"rope_parameters": {"rope_theta": float("nan")}}, "rope_theta"),
    ({"rms_norm_eps": -1}, "rms_norm_eps"),
    ({"num_attention_heads": 0, "head_dim": None}, "invalid value|num_attention_heads"),
    ({"max_position_embeddings": float("inf")}, "invalid value"),
    ({"max_position_embeddings": 1e300}, "max_position_embeddings"),
    ({"eos_token_id": ["a"]}, "invalid value"),
    ({"eos_token_id": [-1]}, "eos_token_id"),
    ({"tie_word_embeddings": "no"}, "tie_word_embeddings"),
    ({"layer_types": None, "num_hidden_layers": 10**18}, "num_hidden_layers"),
    ({"num_hidden_layers": 5000, "layer_types": ["linear_attention"] * 5000}, "at most 4096"),
    ({"layer_types": [["full_attention"]] * 4}, "layer_types"),
    ({"mtp_num_hidden_layers": -3}, "mtp_num_hidden_layers"),
]


@pytest.mark.parametrize(("change", "message"), HOSTILE)
def test_hostile_config_values_are_config_errors(change: dict, message: str) -> None:
    hf = presets.hf_config("tiny")
    change = dict(change)
    for key in ("architectures", "tie_word_embeddings"):  # the wrapper's own keys
        if key in change:
            hf[key] = change.pop(key)
    hf["text_config"].update(change)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf(hf)
    fields = ModelConfig.from_hf(presets.hf_config("tiny")).to_dict()
    renamed = {k: v for k, v in change.items() if k in fields and v is not None}
    if isinstance(change.get("rope_parameters"), dict):  # flat fields in the model file
        renamed.update(change["rope_parameters"])
    if renamed:  # the model file header's reader (from_dict) agrees
        with pytest.raises(ConfigError):
            ModelConfig.from_dict({**fields, **renamed})
