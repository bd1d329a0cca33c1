"""Named Qwen3.5 configurations: the real released shapes and small test/demo shapes.

`hf_config(name)` returns a `config.json` dict in the hub's multimodal-wrapper layout (text
settings under `text_config`), so the same dict feeds transformers, the numpy checkpoint writer
and the reader. Shapes of 0.8B/2B/4B/9B are the released ones (docs/model.md §2.1).
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import ConfigError

# Keys shared by every Qwen3.5 text config (docs/model.md §2.1).
_TEXT_COMMON: dict[str, Any] = {
    "model_type": "qwen3_5_text",
    "vocab_size": 248320,
    "head_dim": 256,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "full_attention_interval": 4,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000000.0,
        "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10],
        "mrope_interleaved": True,
    },
    "max_position_embeddings": 262144,
    "hidden_act": "silu",
    "attention_bias": False,
    "attn_output_gate": True,
    "mtp_num_hidden_layers": 1,
    "mtp_use_dedicated_embeddings": False,
    "mamba_ssm_dtype": "float32",
    "dtype": "bfloat16",
    "eos_token_id": 248044,
}

_VISION_COMMON: dict[str, Any] = {
    "model_type": "qwen3_5_vision",
    "hidden_act": "gelu_pytorch_tanh",
    "in_channels": 3,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [],
}

# name -> (text overrides, vision overrides)
_PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # Small enough for tests and the demo, with the real vocabulary (so the real tokenizer fits),
    # both layer kinds, GQA, and two value heads per key head (as in 4B/9B).
    "tiny": (
        {
            "hidden_size": 64,
            "intermediate_size": 192,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "tie_word_embeddings": True,
        },
        {
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "num_position_embeddings": 64,
        },
    ),
    "0.8b": (
        {
            "hidden_size": 1024,
            "intermediate_size": 3584,
            "num_hidden_layers": 24,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "linear_num_key_heads": 16,
            "linear_num_value_heads": 16,
            "tie_word_embeddings": True,
        },
        {
            "depth": 12,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_heads": 12,
            "out_hidden_size": 1024,
        },
    ),
    "2b": (
        {
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 24,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "linear_num_key_heads": 16,
            "linear_num_value_heads": 16,
            "tie_word_embeddings": True,
        },
        {
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "out_hidden_size": 2048,
        },
    ),
    "4b": (
        {
            "hidden_size": 2560,
            "intermediate_size": 9216,
            "num_hidden_layers": 32,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "linear_num_key_heads": 16,
            "linear_num_value_heads": 32,
            "tie_word_embeddings": True,
        },
        {
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "out_hidden_size": 2560,
        },
    ),
    "9b": (
        {
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 32,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "linear_num_key_heads": 16,
            "linear_num_value_heads": 32,
            "tie_word_embeddings": False,
        },
        {
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "out_hidden_size": 4096,
        },
    ),
}

PRESET_NAMES = tuple(_PRESETS)


def text_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The `text_config` dict of a preset, with explicit `layer_types` and any overrides."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose from {', '.join(PRESET_NAMES)}")
    text = copy.deepcopy(_TEXT_COMMON)
    text.update(copy.deepcopy(_PRESETS[name][0]))
    text.update(overrides)
    interval = text["full_attention_interval"]
    text.setdefault(
        "layer_types",
        [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention"
            for i in range(text["num_hidden_layers"])
        ],
    )
    return text


def hf_config(name: str, **text_overrides: Any) -> dict[str, Any]:
    """A full hub-style `config.json` (multimodal wrapper) for a preset."""
    return wrapper_config(text_config(name, **text_overrides), vision_preset=name)


def wrapper_config(text: dict[str, Any], vision_preset: str = "tiny") -> dict[str, Any]:
    """The hub's `Qwen3_5ForConditionalGeneration` config.json around a text config, with the
    vision tower of preset `vision_preset` (qwen-edge reads only the text config)."""
    vision = copy.deepcopy(_VISION_COMMON)
    vision.update(copy.deepcopy(_PRESETS[vision_preset][1]))
    vision["out_hidden_size"] = text["hidden_size"]
    return {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "image_token_id": 248056,
        "video_token_id": 248057,
        "vision_start_token_id": 248053,
        "vision_end_token_id": 248054,
        "tie_word_embeddings": text["tie_word_embeddings"],
        "text_config": text,
        "vision_config": vision,
    }


def text_only_config(hf: dict[str, Any]) -> dict[str, Any]:
    """The plain text `config.json` (as `Qwen3_5ForCausalLM.save_pretrained` writes it)."""
    text = copy.deepcopy(hf["text_config"])
    text["architectures"] = ["Qwen3_5ForCausalLM"]
    return text
