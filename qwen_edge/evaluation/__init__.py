"""Evaluation: how fast (`bench`) and how accurate (`quality`) a model file is."""
