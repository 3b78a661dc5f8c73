"""Evaluation and inference: answering questions about videos with a trained Video LLM."""
