"""The Qwen3.5 text-model configuration: field names are the Hugging Face `config.json` keys.

`ModelConfig.from_hf` accepts both the multimodal wrapper that the hub ships (text settings
under `text_config`) and a plain text config, checks that it describes a Qwen3.5 text model
qwen-edge can run, and derives the sizes the rest of the code needs (docs/model.md §2).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

# Bounds on any one dimension and on the layer count: far above real models, low enough that
# products of a few dims cannot overflow 64 bits (csrc/model/config.cc has the same).
MAX_DIM = 1 << 24
MAX_LAYERS = 4096
LINEAR = "linear_attention"
FULL = "full_attention"

# model_type values of Qwen3.5 configs: the wrapper and its text sub-config.
WRAPPER_MODEL_TYPE = "qwen3_5"
TEXT_MODEL_TYPE = "qwen3_5_text"
KNOWN_ARCHITECTURES = ("Qwen3_5ForConditionalGeneration", "Qwen3_5ForCausalLM")
# The MTP head's tensors, beside the text model's, in checkpoints and model files alike.
MTP_PREFIX = "mtp."


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the Qwen3.5 text decoder (names as in HF `text_config`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    layer_types: tuple[str, ...]
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e7
    partial_rotary_factor: float = 0.25
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 262144
    eos_token_id: tuple[int, ...] = ()
    mtp_num_hidden_layers: int = 0

    def __post_init__(self) -> None:
        self._validate()

    # --- derived sizes (docs/model.md §2.2) ---
    @property
    def rotary_dim(self) -> int:
        """Leading dims of each attention head that RoPE rotates."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the GDN causal conv: q, k and v of the fused in_proj_qkv."""
        return 2 * self.key_dim + self.value_dim

    @property
    def linear_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == LINEAR]

    @property
    def full_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == FULL]

    def text_tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the text model, by its name without the `model.` prefixes
        (docs/model.md §3.2).

        Shapes are PyTorch `[out, in]`. `lm_head.weight` is listed only when not tied.
        """
        H, I, V = self.hidden_size, self.intermediate_size, self.vocab_size  # noqa: E741
        nh, nkv, hd = self.num_attention_heads, self.num_key_value_heads, self.head_dim
        nv = self.linear_num_value_heads
        shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (V, H)}
        for i, kind in enumerate(self.layer_types):
            p = f"layers.{i}."
            shapes[p + "input_layernorm.weight"] = (H,)
            if kind == LINEAR:
                a = p + "linear_attn."
                shapes[a + "in_proj_qkv.weight"] = (self.conv_dim, H)
                shapes[a + "in_proj_z.weight"] = (self.value_dim, H)
                shapes[a + "in_proj_b.weight"] = (nv, H)
                shapes[a + "in_proj_a.weight"] = (nv, H)
                shapes[a + "conv1d.weight"] = (self.conv_dim, 1, self.linear_conv_kernel_dim)
                shapes[a + "dt_bias"] = (nv,)
                shapes[a + "A_log"] = (nv,)
                shapes[a + "norm.weight"] = (self.linear_value_head_dim,)
                shapes[a + "out_proj.weight"] = (H, self.value_dim)
            else:
                a = p + "self_attn."
                shapes[a + "q_proj.weight"] = (2 * nh * hd, H)
                shapes[a + "k_proj.weight"] = (nkv * hd, H)
                shapes[a + "v_proj.weight"] = (nkv * hd, H)
                shapes[a + "o_proj.weight"] = (H, nh * hd)
                shapes[a + "q_norm.weight"] = (hd,)
                shapes[a + "k_norm.weight"] = (hd,)
            shapes[p + "post_attention_layernorm.weight"] = (H,)
            shapes[p + "mlp.gate_proj.weight"] = (I, H)
            shapes[p + "mlp.up_proj.weight"] = (I, H)
            shapes[p + "mlp.down_proj.weight"] = (H, I)
        shapes["norm.weight"] = (H,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (V, H)
        return shapes

    def _validate(self) -> None:
        positive = [
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "linear_num_key_heads",
            "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
            "linear_conv_kernel_dim",
        ]  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_DIM:
                raise ConfigError(
                    f"config: {name} must be an integer in 1..{MAX_DIM}, found {value!r}"
                )
        for name, low in (("max_position_embeddings", 1), ("mtp_num_hidden_layers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 2**31:
                raise ConfigError(
                    f"config: {name} must be an integer in {low}..{2**31}, found {value!r}"
                )
        if not isinstance(self.tie_word_embeddings, bool):
            raise ConfigError("config: tie_word_embeddings must be a boolean")
        if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0
                   for e in self.eos_token_id):  # fmt: skip
            raise ConfigError("config: eos_token_id entries must be non-negative integers")
        if not all(isinstance(t, str) for t in self.layer_types):
            raise ConfigError("config: layer_types entries must be strings")
        for name in ("rms_norm_eps", "rope_theta", "partial_rotary_factor"):
            value = getattr(self, name)
            if not (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0
            ):
                raise ConfigError(
                    f"config: {name} must be a positive finite number, found {value!r}"
                )
        if self.partial_rotary_factor > 1:  # checked before rotary_dim converts it to an int
            raise ConfigError(
                "config: partial_rotary_factor must be in (0, 1], found "
                f"{self.partial_rotary_factor}"
            )
        if self.num_hidden_layers > MAX_LAYERS:
            raise ConfigError(
                f"config: num_hidden_layers must be at most {MAX_LAYERS}, found "
                f"{self.num_hidden_layers}"
            )
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(
                f"config: layer_types has {len(self.layer_types)} entries, "
                f"num_hidden_layers is {self.num_hidden_layers}"
            )
        unknown = sorted(set(self.layer_types) - {LINEAR, FULL})
        if unknown:
            raise ConfigError(
                f"config: unknown layer type(s) {unknown}; Qwen3.5 has '{LINEAR}' and '{FULL}'"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"config: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ConfigError(
                f"config: linear_num_value_heads ({self.linear_num_value_heads}) is not a multiple"
                f" of linear_num_key_heads ({self.linear_num_key_heads})"
            )
        rot = self.rotary_dim
        if rot <= 0 or rot % 2 or rot > self.head_dim:
            raise ConfigError(
                f"config: partial_rotary_factor {self.partial_rotary_factor} x head_dim "
                f"{self.head_dim} gives {rot} rotary dims; need an even number in 2..head_dim"
            )

    # --- (de)serialization ---
    @classmethod
    def from_hf(cls, config: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Builds the text config from an HF config dict (wrapper or plain text config).

        Args:
            config: the parsed `config.json`.
            source: file name used in error messages.

        Raises:
            ConfigError: another architecture, a missing key, or an unsupported setting.
        """
        if not isinstance(config, dict):
            raise ConfigError(f"{source}: expected a JSON object")
        model_type = config.get("model_type")
        archs = config.get("architectures") or []
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ConfigError(f"{source}: 'architectures' must be a list of class names")
        if model_type == WRAPPER_MODEL_TYPE or "text_config" in config:
            text = config.get("text_config")
            if not isinstance(text, dict):
                raise ConfigError(f"{source}: model_type '{model_type}' but no text_config object")
        else:
            text = config
        text_type = text.get("model_type", model_type)
        known_arch = any(a in KNOWN_ARCHITECTURES for a in archs)
        if model_type not in (WRAPPER_MODEL_TYPE, TEXT_MODEL_TYPE) and not known_arch:
            found = ", ".join(archs) or "no architectures"
            raise ConfigError(
                f"{source}: this is a '{model_type}' model ({found}); qwen-edge runs Qwen3.5 "
                f"(model_type '{WRAPPER_MODEL_TYPE}' or '{TEXT_MODEL_TYPE}')"
            )
        if text_type not in (TEXT_MODEL_TYPE, WRAPPER_MODEL_TYPE, None):
            raise ConfigError(f"{source}: text_config has model_type '{text_type}', not Qwen3.5")

        def get(key: str, default: Any = ...) -> Any:
            if key in text:
                return text[key]
            if default is ...:
                raise ConfigError(f"{source}: text config has no '{key}'")
            return default

        _check_supported(text, source)
        rope = _rope(text, source)
        rope_theta = rope.get("rope_theta", text.get("rope_theta", 1e7))
        partial = rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25))
        n_layers = get("num_hidden_layers")
        layer_types = text.get("layer_types")
        if layer_types is None:
            # docs/model.md §2.3: every `full_attention_interval`-th layer is full attention.
            interval = text.get("full_attention_interval", 4)
            if (
                not isinstance(n_layers, int)
                or not 0 < n_layers <= MAX_LAYERS
                or not isinstance(interval, int)
                or interval <= 0
            ):
                raise ConfigError(f"{source}: bad num_hidden_layers / full_attention_interval")
            layer_types = [FULL if (i + 1) % interval == 0 else LINEAR for i in range(n_layers)]
        if not isinstance(layer_types, list):
            raise ConfigError(f"{source}: layer_types must be a list")
        # The wrapper's top-level flag is the one transformers' ForConditionalGeneration ties by.
        tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        eos = text.get("eos_token_id", config.get("eos_token_id"))
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        try:
            return cls(
                vocab_size=get("vocab_size"),
                hidden_size=get("hidden_size"),
                intermediate_size=get("intermediate_size"),
                num_hidden_layers=n_layers,
                num_attention_heads=get("num_attention_heads"),
                num_key_value_heads=get("num_key_value_heads"),
                head_dim=get("head_dim", None) or get("hidden_size") // get("num_attention_heads"),
                linear_num_key_heads=get("linear_num_key_heads"),
                linear_num_value_heads=get("linear_num_value_heads"),
                linear_key_head_dim=get("linear_key_head_dim"),
                linear_value_head_dim=get("linear_value_head_dim"),
                linear_conv_kernel_dim=get("linear_conv_kernel_dim", 4),
                layer_types=tuple(layer_types),
                rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope_theta),
                partial_rotary_factor=float(partial),
                tie_word_embeddings=tie,
                max_position_embeddings=int(get("max_position_embeddings", 262144)),
                eos_token_id=tuple(int(e) for e in eos_ids),
                mtp_num_hidden_layers=int(get("mtp_num_hidden_layers", 0) or 0),
            )
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}".replace("config: ", "", 1)) from None
        except (TypeError, ValueError, ArithmeticError) as e:
            raise ConfigError(f"{source}: invalid value in text config: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Reads and validates a `config.json`."""
        return cls.from_hf(read_json(Path(path)), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["eos_token_id"] = list(self.eos_token_id)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict` (used by the model file header)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ConfigError(f"config: unknown field(s) {sorted(unknown)}")
        d = dict(d)
        for key in ("layer_types", "eos_token_id"):
            if key in d:
                d[key] = tuple(d[key])
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config: {e}") from None


def _check_supported(text: dict[str, Any], source: str) -> None:
    """Rejects settings that change the math in ways this runtime does not implement."""
    unsupported = {
        "hidden_act": ("silu", text.get("hidden_act", "silu")),
        "attention_bias": (False, text.get("attention_bias", False)),
        "attn_output_gate": (True, text.get("attn_output_gate", True)),
    }
    for key, (want, found) in unsupported.items():
        if found != want:
            raise ConfigError(
                f"{source}: {key} = {found!r} is not supported (Qwen3.5 uses {want!r})"
            )
    rope = _rope(text, source)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConfigError(f"{source}: rope_type '{rope_type}' is not supported (only 'default')")


def _rope(text: dict[str, Any], source: str) -> dict[str, Any]:
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: rope_parameters must be an object")
    return rope


def read_json(path: Path) -> Any:
    """Reads a JSON file, turning I/O and syntax problems into ConfigError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None
