"""Turning Hugging Face Qwen3.5 checkpoints into qwen-edge model files, and making test ones."""
