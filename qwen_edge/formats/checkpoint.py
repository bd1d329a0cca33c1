"""Reader for Qwen3.5 checkpoint folders exactly as the Hugging Face hub ships them.

Handles `config.json` as the multimodal wrapper or as a plain text config; `model.safetensors`
or shards listed by `model.safetensors.index.json`; bf16, fp16 and fp32 tensors; text tensors
under `model.language_model.` (hub) or `model.` (a text-only `save_pretrained`). Vision-tower
(`model.visual.*`) and MTP (`mtp.*`) tensors are recognised, counted and left on disk for later
use. Everything is validated against the config when the folder is opened; tensors are then
read one at a time from memory maps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from .config import FULL, LINEAR, MTP_PREFIX, ModelConfig, read_json
from .safetensors import FLOAT_DTYPES, SafetensorsFile, TensorInfo

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
WRAPPER_PREFIX = "model.language_model."
TEXT_PREFIX = "model."
VISION_PREFIXES = ("model.visual.", "visual.")
# Buffers some exporters save that carry no weights (RoPE tables are computed).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class TensorGroups:
    """Checkpoint tensors sorted by the part of the model they belong to."""

    text: dict[str, TensorInfo] = field(default_factory=dict)  # canonical name -> info
    vision: dict[str, TensorInfo] = field(default_factory=dict)
    mtp: dict[str, TensorInfo] = field(default_factory=dict)
    ignored: dict[str, TensorInfo] = field(default_factory=dict)


class Checkpoint:
    """A validated Qwen3.5 checkpoint folder.

    Text tensors are addressed by canonical names: the HF name without `model.language_model.`
    or `model.` (e.g. `layers.0.mlp.up_proj.weight`, `embed_tokens.weight`, `lm_head.weight`).

    Raises (from the constructor):
        CheckpointError: missing files, a missing tensor, a shape that disagrees with the config,
            an unsupported dtype, a truncated or malformed safetensors file.
        ConfigError: a config of another architecture or with unsupported settings.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            what = "does not exist" if not self.path.exists() else "is not a folder"
            raise CheckpointError(f"{self.path}: {what}; expected a Hugging Face checkpoint folder")
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{self.path}: no config.json; {_listing(self.path)}")
        self.raw_config: dict[str, Any] = read_json(config_path)
        self.config = ModelConfig.from_hf(self.raw_config, source=str(config_path))
        self.files = self._open_files()
        self.groups = self._classify()
        self.layout = (
            "wrapper"
            if any(i.name.startswith(WRAPPER_PREFIX) for i in self.groups.text.values())
            else "text"
        )
        self._validate_text_tensors()

    # --- opening ---
    def _open_files(self) -> dict[str, SafetensorsFile]:
        index_path = self.path / INDEX_FILE
        if index_path.is_file():
            index = read_json(index_path)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_path}: no 'weight_map' object")
            names = sorted(set(weight_map.values()))
            missing = [n for n in names if not (self.path / n).is_file()]
            if missing:
                raise CheckpointError(
                    f"{index_path} lists shard(s) that are missing: {', '.join(missing)}"
                )
            files = {n: SafetensorsFile(self.path / n) for n in names}
            for tensor, shard in weight_map.items():
                if tensor not in files[shard].tensors:
                    raise CheckpointError(
                        f"{index_path} says '{tensor}' is in {shard}, "
                        f"but {shard} has no such tensor"
                    )
            return files
        if (self.path / SINGLE_FILE).is_file():
            return {SINGLE_FILE: SafetensorsFile(self.path / SINGLE_FILE)}
        shards = sorted(p.name for p in self.path.glob("*.safetensors"))
        if not shards:
            raise CheckpointError(
                f"{self.path}: no {SINGLE_FILE} and no {INDEX_FILE}; {_listing(self.path)}"
            )
        return {n: SafetensorsFile(self.path / n) for n in shards}

    def _classify(self) -> TensorGroups:
        groups = TensorGroups()
        for file in self.files.values():
            for name, info in file.tensors.items():
                if name.startswith(VISION_PREFIXES):
                    groups.vision[name] = info
                elif name.startswith(MTP_PREFIX):
                    groups.mtp[name] = info
                elif name.endswith(_IGNORED_SUFFIXES):
                    groups.ignored[name] = info
                else:
                    canonical = canonical_name(name)
                    if canonical is None:
                        groups.ignored[name] = info
                        continue
                    if canonical in groups.text:
                        other = groups.text[canonical]
                        raise CheckpointError(
                            f"{self.path}: tensor '{canonical}' appears twice: '{other.name}' in "
                            f"{other.path.name} and '{name}' in {info.path.name}"
                        )
                    groups.text[canonical] = info
        return groups

    def _validate_text_tensors(self) -> None:
        expected = self.config.text_tensor_shapes()
        prefix = WRAPPER_PREFIX if self.layout == "wrapper" else TEXT_PREFIX
        for name, shape in expected.items():
            info = self.groups.text.get(name)
            if info is None:
                hf_name = name if name == "lm_head.weight" else prefix + name
                hint = (
                    " (config.json says tie_word_embeddings is false)"
                    if name == "lm_head.weight"
                    else ""
                )
                raise CheckpointError(
                    f"{self.path}: tensor '{hf_name}' is missing{hint}; "
                    f"files read: {', '.join(self.files)}"
                )
            if info.shape != shape:
                raise CheckpointError(
                    f"{info.path}: tensor '{info.name}' has shape {list(info.shape)}, "
                    f"but config.json implies {list(shape)}"
                )
            if info.dtype not in FLOAT_DTYPES:
                raise CheckpointError(
                    f"{info.path}: tensor '{info.name}' has dtype {info.dtype}; supported: "
                    f"{', '.join(FLOAT_DTYPES)} (start from the original bf16 release)"
                )
        for name, info in list(self.groups.text.items()):
            if name in expected:
                continue
            if name == "lm_head.weight":  # tied: transformers ignores a stored head too
                self.groups.ignored[info.name] = self.groups.text.pop(name)
                continue
            m = re.match(r"layers\.(\d+)\.", name)
            if m and int(m.group(1)) >= self.config.num_hidden_layers:
                raise CheckpointError(
                    f"{info.path}: tensor '{info.name}' belongs to layer {m.group(1)}, but "
                    f"config.json has num_hidden_layers = {self.config.num_hidden_layers}"
                )
            raise CheckpointError(
                f"{info.path}: tensor '{info.name}' is not part of a Qwen3.5 text model with "
                "this config (does config.json match the weights?)"
            )

    # --- reading ---
    def info(self, name: str) -> TensorInfo:
        """Location, dtype and shape of a text tensor (canonical name)."""
        try:
            return self.groups.text[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no text tensor '{name}'") from None

    def read(self, name: str) -> np.ndarray:
        """A text tensor (canonical name) as a new float32 array."""
        info = self.info(name)
        return self.files[info.path.name].read_f32(info.name)

    def read_any(self, hf_name: str) -> np.ndarray:
        """Any tensor by its name in the checkpoint (vision and MTP included), as float32."""
        for file in self.files.values():
            if hf_name in file.tensors:
                return file.read_f32(hf_name)
        raise CheckpointError(f"{self.path}: no tensor '{hf_name}'")

    def iter_text(self) -> Iterator[tuple[str, np.ndarray]]:
        """Yields (canonical name, float32 array) for every text tensor, one at a time."""
        for name in self.config.text_tensor_shapes():
            yield name, self.read(name)

    def close(self) -> None:
        for file in self.files.values():
            file.close()

    # --- reporting ---
    def summary(self) -> dict[str, Any]:
        """Config, parameter counts by part and the text model's size at several bit widths."""
        cfg = self.config
        text = self.groups.text

        def count(names: Any) -> int:
            return sum(text[n].numel for n in names)

        def layer_part(i: int, part: str) -> list[str]:
            return [n for n in text if n.startswith(f"layers.{i}.{part}")]

        def layer_total(i: int) -> int:
            return count(n for n in text if n.startswith(f"layers.{i}."))

        parts: dict[str, Any] = {"embeddings": text["embed_tokens.weight"].numel}
        parts["lm_head"] = 0 if cfg.tie_word_embeddings else text["lm_head.weight"].numel
        for kind, mixer in ((LINEAR, "linear_attn."), (FULL, "self_attn.")):
            layers = [i for i, t in enumerate(cfg.layer_types) if t == kind]
            parts[kind] = {
                "layers": len(layers),
                "mixer": sum(count(layer_part(i, mixer)) for i in layers),
                "mlp": sum(count(layer_part(i, "mlp.")) for i in layers),
                "norms": sum(count(layer_part(i, "input_layernorm")) for i in layers)
                + sum(count(layer_part(i, "post_attention_layernorm")) for i in layers),
                "total": sum(layer_total(i) for i in layers),
            }
        parts["final_norm"] = text["norm.weight"].numel
        text_total = sum(i.numel for i in text.values())
        dtypes = sorted({i.dtype for i in text.values()})
        return {
            "path": str(self.path),
            "layout": self.layout,
            "files": list(self.files),
            "architectures": self.raw_config.get("architectures", []),
            "model_type": self.raw_config.get("model_type"),
            "dtypes": dtypes,
            "config": cfg.to_dict(),
            "parameters": {
                **parts,
                "text_total": text_total,
                "vision": {
                    "tensors": len(self.groups.vision),
                    "parameters": sum(i.numel for i in self.groups.vision.values()),
                },
                "mtp": {
                    "tensors": len(self.groups.mtp),
                    "parameters": sum(i.numel for i in self.groups.mtp.values()),
                },
                "ignored_tensors": sorted(self.groups.ignored),
            },
            "text_size_bytes": {
                str(bits): math.ceil(text_total * bits / 8) for bits in (16, 8, 4.5)
            },
        }


def canonical_name(hf_name: str) -> str | None:
    """Text-model name without its prefix, or None for a name outside the text model."""
    if hf_name.startswith(WRAPPER_PREFIX):
        return hf_name[len(WRAPPER_PREFIX) :]
    if hf_name == "lm_head.weight":
        return hf_name
    if hf_name.startswith(TEXT_PREFIX):
        return hf_name[len(TEXT_PREFIX) :]
    return None


def _listing(path: Path) -> str:
    names = sorted(p.name for p in path.iterdir())[:12]
    return "found: " + (", ".join(names) if names else "an empty folder")
