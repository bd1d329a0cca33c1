"""Formats: what is stored and how it is read and written, with no model execution.

`config` (the Qwen3.5 text configuration and derived sizes), `safetensors` and `checkpoint`
(Hugging Face checkpoints in both hub layouts), `quant` (the packed weight formats and their
quantizers; numpy is the source of truth, `_quant_numba` an optional accelerator), `model_file`
(the `.qe` model file: `layout`, `reader`, `writer`) and `atomic_files` (how every writer
publishes a file: a temporary file of its own, fsync, rename).
"""
